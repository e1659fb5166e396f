"""Chat with a `.dat` on the inference path: one user line in, one answer out, history kept.

    make chat WEIGHT=artifacts/stageD-disambiguate-v2.dat
    printf '你是誰\n談談UFO\n' | python scripts/interactive_chat.py --weight artifacts/x.dat

`/reset` forgets the conversation; end of input (Ctrl-D) quits. Works with piped stdin too.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import warm  # noqa: E402  (light: nothing heavy is imported before the hand-over)

if __name__ == "__main__":
    warm.hand_over(__file__)   # a warm runner server runs us in a fork of itself, if one is up

from nvfp4lab import runner, runner_flags, runner_generate, runner_session  # noqa: E402

PROG = "interactive_chat.py"
FLAGS = runner_flags.common_flags(
    "model-dir", "device", "dtype", "weight", "max-tokens", "temp", "top-p", "seed", "timing",
    "ignore-eos", "compile-step", "fused-gemv", "timeout-ms", "chat-session-out", "chat-session-jsonl",
    max_tokens=256, timeout_ms=0,
)


def main(argv: list[str]) -> int:
    runner.setup_stdio()
    a = runner_flags.parse_flags(argv, FLAGS, PROG)
    device, dtype = runner.device_and_dtype(a)
    model, tok, load_s = runner.load_for_runner(a.weight, a.model_dir, device, dtype,
                                                training_path=False)
    if a.timing:
        print(f"[time] load: {load_s:.1f} s")
    chat = runner_session.Conversation(model, tok, a)
    for line in runner.user_lines(require_tty=False, banner="/reset 清除對話，Ctrl+D 結束"):
        if line == "/reset":
            chat.reset()
            print("(history cleared)")
            continue
        text, gen, n = chat.ask(line, a.timeout_ms)
        if a.timing:
            runner_generate.print_timing(gen, n)
        print(text)
    return 0


if __name__ == "__main__":
    runner.run_main(main)
