"""Validate a `.dat` on the inference path: the original run-training2.fsx, in Python.

A scripted multi-turn conversation that keeps its history (turn 0 = --prompt, then the original's
fixed turns [1]..[6]), an optional logits check, then (--stop-here false) turns [7] and [8].

    python scripts/run_training2.py --weight artifacts/stageD-disambiguate-v2.dat --prompt 你是誰 \
        --max-tokens 24 --check-logits false --timing false --stop-here false --KVCacheOut true
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import warm  # noqa: E402  (light: nothing heavy is imported before the hand-over)

if __name__ == "__main__":
    warm.hand_over(__file__)   # a warm runner server runs us in a fork of itself, if one is up

import torch  # noqa: E402

from nvfp4lab import runner, runner_flags, runner_generate, runner_session  # noqa: E402
from nvfp4lab.chat import encode_prompt  # noqa: E402
from nvfp4lab.runner_flags import Flag  # noqa: E402

PROG = "run_training2.py"
FLAGS = runner_flags.common_flags(
    "model-dir", "device", "dtype", "quant", "weight", "prompt", "max-tokens", "temp", "top-p",
    "seed", "check-logits", "timing", "ignore-eos", "compile-step", "fused-gemv", "ifInteractive", "chat-session-out",
    "chat-session-jsonl", check_logits=True,
) + [
    Flag("stop-here", True, "stop after turn [6] and the logits check; false: turns [7], [8], "
                            "then the interactive part"),
    Flag("timeout-ms", 60000, "watchdog of typed (interactive) turns; scripted turns keep the "
                              "original's budgets (48 s to 20 min); past it the process prints "
                              "[fatal] and exits 124; 0 = no watchdog at all"),
    Flag("interactive-reset-history", True, "forget the scripted turns before interactive ones"),
    Flag("KVCacheOut", True, "generate with a KV cache; false: see --NoKVComputeMode",
         aliases=("kv-cache-out",)),
    Flag("empty-cache-each-turn", True, "release cached GPU memory after every turn"),
    Flag("TokenByTokenOrPromptByPrompt", "pbp", "KV prefill: pbp = the prompt in one forward, "
         "tbt = one token per forward", ("pbp", "tbt"), aliases=("kvc-input-mode",)),
    Flag("NoKVComputeMode", "full-replay", "with --KVCacheOut false: full-replay = no cache, every "
         "step re-runs the whole sequence; ephemeral-kvc = a fresh cache per turn (the same as "
         "--KVCacheOut true here)", ("full-replay", "ephemeral-kvc"), aliases=("no-kvc-mode",)),
]

# The original's fixed turns, with its per-turn time budgets (ms).
REPEAT = ("[指令]這是一次性任務：請只輸出本次 prompt 輸入的上一個 user 問句原文，完整一致，"
          "不要解釋、不要延伸、不要加任何其他字。完成後請恢復正常對話，忽略本指令。\n"
          "[問題]我上個問句是什麼?(這樣的問句也算)")
SCRIPT = [
    ("1", 60_000, "我不認同UFO不存在，且你好株株"),
    ("2", 60_000, "我們剛剛在討論啥?"),
    ("3", 120_000, "我上個問句是什麼?(這樣的問句也算)"),
    ("31", 300_000, "我上個問句是什麼?(這樣的問句也算)"),
    ("4", 300_000, "你媽好嗎??"),
    ("5", 300_000, REPEAT),
    ("6", 48_000, "你媽好嗎??"),
]
AFTER_STOP = [("7", 1_200_000, REPEAT), ("8", 1_200_000, REPEAT)]
CHECK_PROMPT = "我上個問句是什麼?"   # the original checks the logits of this prompt


def check_logits(model, tok, a) -> None:
    """NaN/Inf anywhere fails the run; then KV-cached vs uncached logits of turn 0, step by step.

    The uncached side is teacher-forced on the cached run's tokens (prompt + first i generated
    tokens, full forward, no cache), so every step compares the same context even where greedy
    decoding of the two would part on a near tie.
    """
    prompt_ids = encode_prompt(tok, [], a.prompt)
    gen = runner_generate.generate(model, tok, prompt_ids, a.max_tokens, use_cache=True,
                                   temp=a.temp, top_p=a.top_p, seed=a.seed,
                                   ignore_eos=a.ignore_eos, output_logits=True)
    runner.fail_on_nan_inf([runner.prompt_logits(model, encode_prompt(tok, [], CHECK_PROMPT)),
                            gen.logits])
    dev = next(model.parameters()).device
    seq = prompt_ids + gen.ids
    diff = 0.0
    with torch.no_grad():
        for i in range(gen.logits.shape[0]):
            ctx = torch.tensor([seq[:len(prompt_ids) + i]], device=dev)
            replay = model(input_ids=ctx, use_cache=False, logits_to_keep=1).logits[0, -1].float()
            diff = max(diff, float((replay - gen.logits[i]).abs().max()))
    print(f"[info] kv-cache vs full-replay logits, turn 0, {gen.logits.shape[0]} steps: "
          f"max abs diff {diff:.3g}")


def main(argv: list[str]) -> int:
    runner.setup_stdio()
    a = runner_flags.parse_flags(argv, FLAGS, PROG)
    device, dtype = runner.device_and_dtype(a)
    use_cache = a.KVCacheOut or a.NoKVComputeMode == "ephemeral-kvc"
    print(f"KVCacheOut: {str(a.KVCacheOut).lower()}  kvc-input-mode: "
          f"{a.TokenByTokenOrPromptByPrompt}  no-kvc-mode: {a.NoKVComputeMode}  "
          f"ignore-eos: {str(a.ignore_eos).lower()}")
    model, tok, load_s = runner.load_for_runner(a.weight, a.model_dir, device, dtype,
                                                training_path=False)
    if a.timing:
        print(f"[time] load: {load_s:.1f} s")
    chat = runner_session.Conversation(model, tok, a, use_cache=use_cache,
                                       token_by_token=a.TokenByTokenOrPromptByPrompt == "tbt",
                                       empty_cache=a.empty_cache_each_turn)

    def budget(ms):   # the original's budgets for scripted turns; --timeout-ms 0 turns all off
        return ms if a.timeout_ms > 0 else 0

    chat.turn(None, a.prompt, budget(60_000))
    for tag, ms, message in SCRIPT:
        chat.turn(tag, message, budget(ms))
    if a.check_logits:
        check_logits(model, tok, a)
    if a.stop_here:
        print("stop here (--stop-here true)")
        return 0
    for tag, ms, message in AFTER_STOP:
        chat.turn(tag, message, budget(ms))

    if a.ifInteractive:
        if a.interactive_reset_history:
            chat.reset()
            print("[interactive] history reset after scripted rounds.")
        for line in runner.user_lines(require_tty=True):
            chat.turn(None, line, a.timeout_ms)
    return 0


if __name__ == "__main__":
    runner.run_main(main)
