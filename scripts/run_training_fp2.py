"""Validate a `.dat` on the TRAINING forward path: the original run-training-fp2.fsx, in Python.

Every weight goes through what the trainer differentiates (fake-quantized NVFP4 base + delta,
straight-through), with zero deltas and no gradients, so the answers printed are those of the
function that was trained. Turn 1 asks --prompt, later turns (--turns N) the follow-up prompt.

    python scripts/run_training_fp2.py --max-tokens 6 --stop-here false --check-logits false \
        --timing false
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import warm  # noqa: E402  (light: nothing heavy is imported before the hand-over)

if __name__ == "__main__":
    warm.hand_over(__file__)   # a warm runner server runs us in a fork of itself, if one is up

import torch  # noqa: E402

from nvfp4lab import runner, runner_flags, runner_session  # noqa: E402
from nvfp4lab.chat import encode_prompt  # noqa: E402
from nvfp4lab.runner_flags import Flag  # noqa: E402

PROG = "run_training_fp2.py"
FLAGS = runner_flags.common_flags(
    "model-dir", "device", "dtype", "quant", "weight", "prompt", "max-tokens", "temp", "top-p",
    "seed", "check-logits", "timing", "ignore-eos", "compile-step", "ifInteractive", "timeout-ms",
    "chat-session-out", "chat-session-jsonl",
    prompt="你是誰", max_tokens=24, check_logits=False, timing=True, ifInteractive=True,
) + [
    Flag("stop-here", False, "print `stop here` at the end (the original failed there on purpose)"),
    Flag("use-kvc", True, "one KV cache kept across turns, each turn feeds only its new tokens; "
                          "false: every step re-runs the whole rendered conversation"),
    Flag("kvc-backend", "fp2-model", "the KV cache of the training-path model (the original's "
                                     "`bridge` backend is not a training path)", ("fp2-model",)),
    Flag("turns", 1, "scripted turns: 1 = --prompt only, then --followup-prompt"),
    Flag("followup-prompt", "continue.", "user message of turns 2.."),
]


def check_output(text: str, what: str) -> None:
    # The original's fail-fast: NaN logits decode as token 0, "!", so "!!!!" means broken numerics.
    if "!!!!" in text:
        runner.die(f"{what} output is !!!! (guard triggered: NaN logits?)")


def main(argv: list[str]) -> int:
    runner.setup_stdio()
    a = runner_flags.parse_flags(argv, FLAGS, PROG)
    a.turns = max(1, a.turns)
    device, dtype = runner.device_and_dtype(a)
    print(f"mode: training-path/use-kvc={str(a.use_kvc).lower()}/kvc-backend={a.kvc_backend}")
    print(f"run: turns={a.turns} maxTokens={a.max_tokens} (first '!!!!' in any turn triggers "
          "fail-fast)")
    model, tok, load_s = runner.load_for_runner(a.weight, a.model_dir, device, dtype,
                                                training_path=True)
    if a.timing:
        print(f"[time] load: {load_s:.1f} s")
    torch.set_grad_enabled(False)   # the trainable deltas stay zero and no graph is kept
    chat = runner_session.Conversation(model, tok, a, use_cache=a.use_kvc,
                                       persistent_kv=a.use_kvc)

    def turn(tag, message):
        check_output(chat.turn(tag, message, a.timeout_ms), f"turn {tag or 1}")
        if a.use_kvc:
            print(f"[kvc] turn-cache seqLen={chat.cached_length()} "
                  f"contextTokens={len(chat.context)}")

    for t in range(1, a.turns + 1):
        turn(f"turn-{t}" if a.turns > 1 else None, a.prompt if t == 1 else a.followup_prompt)

    if a.check_logits:
        runner.fail_on_nan_inf([runner.prompt_logits(model, encode_prompt(tok, [], a.prompt))])

    if a.ifInteractive:
        for line in runner.user_lines(require_tty=True):
            turn(None, line)
    if a.stop_here:
        print("stop here (--stop-here true)")
    return 0


if __name__ == "__main__":
    runner.run_main(main)
