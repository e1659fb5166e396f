"""The validation runners as the user runs them: real subprocesses on a tiny Qwen3, CPU.

The tiny fixture's head is its random embedding, so it only ever repeats its last input token
("\\n"), and that NVFP4 head (152k x 64) is dequantized at every step. Most runs therefore use
`varied`: the same model with its own dense random lm_head, whose greedy answers depend on the
context (a real test of cache vs no cache, and of history) and cost a few ms per token. All
subprocesses start at once (module fixture) and each test waits for the one it reads: the suite
is dominated by interpreter start-up, which then overlaps.
"""
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nvfp4lab import runner, runner_flags, runner_generate, runner_session
from nvfp4lab.chat import encode_prompt
from nvfp4lab.dat import read_dat, write_dat

ROOT = Path(__file__).resolve().parents[1]
RT2 = str(ROOT / "scripts" / "run_training2.py")
FP2 = str(ROOT / "scripts" / "run_training_fp2.py")
CHAT = str(ROOT / "scripts" / "interactive_chat.py")
VALIDATE = str(ROOT / "scripts" / "validate.py")
TIMEOUT = 240

# The user's commands, word for word (the weight is overridden by a later --weight: last wins).
USER_RT2 = ["--weight", "artifacts/stageD-disambiguate-v2.dat", "--prompt", "你是誰",
            "--max-tokens", "24", "--check-logits", "false", "--timing", "false",
            "--stop-here", "false", "--KVCacheOut", "true"]
USER_FP2 = ["--max-tokens", "6", "--stop-here", "false", "--check-logits", "false",
            "--timing", "false"]


def untie_with_random_head(model_dir: Path, dat_path: Path, out_dir: Path, seed=1) -> Path:
    """Copy of the tiny model whose lm_head is its own dense random tensor (see module doc)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_dir / "config.json", out_dir / "config.json")
    src = read_dat(dat_path)
    vocab, hidden = src.by_key["model.embed_tokens.weight"].shape
    g = torch.Generator().manual_seed(seed)
    head = torch.randn(vocab, hidden, generator=g).half()
    entries = [(e.key, e.elem_type, src.tensor(e.key)) for e in src.entries
               if not e.key.startswith("lm_head.")]
    write_dat(out_dir / "varied.dat", entries + [("lm_head.weight", 5, head)])
    return out_dir / "varied.dat"


class Run:
    """A script started now; .result() waits for it (stdout/stderr go to files: no pipe stalls)."""

    def __init__(self, tmp: Path, name: str, script: str, args: list):
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        # One thread each: the runs share the cores, and spinning OpenMP workers would only contend.
        env = dict(os.environ, QWEN3_FS_DEBUG_TOKENS="1", CUDA_VISIBLE_DEVICES="",
                   OMP_NUM_THREADS="1")
        # stdin is a pipe that stays open (and is not a terminal): a runner reading it would hang.
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.p = subprocess.Popen([sys.executable, script, *map(str, args)], cwd=tmp, env=env,
                                      stdin=subprocess.PIPE, stdout=o, stderr=e, text=True)
        self.done = None

    def result(self):
        if self.done is None:
            try:
                rc = self.p.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                pytest.fail(f"{self.p.args} did not finish in {TIMEOUT} s:\n{self.out.read_text()}")
            finally:
                if not self.p.stdin.closed:
                    self.p.stdin.close()
            self.done = (rc, self.out.read_text(encoding="utf-8"),
                         self.err.read_text(encoding="utf-8"))
        return self.done


def ok(run: Run) -> str:
    rc, out, err = run.result()
    assert rc == 0, f"exit {rc}\n--- stdout\n{out}\n--- stderr\n{err}"
    assert "Traceback" not in err, err
    return out


def answers(out: str) -> dict:
    """tag -> (answer text, token ids); tag "" for the `out:` turn. Answers may span lines."""
    found, tag = {}, None
    for line in out.split("\n"):
        m = re.match(r"^(?:\[([\w-]+)\])?out: (.*)$", line)
        if m:
            tag = m.group(1) or ""
            found[tag] = [m.group(2), None]
        elif line.startswith("[debug] generated token ids: ") and tag is not None:
            found[tag][1] = json.loads(line.split(": ", 1)[1])
            tag = None
        elif tag is not None and not line.startswith(("[", "out tokens count:")):
            found[tag][0] += "\n" + line
    return {k: tuple(v) for k, v in found.items()}


@pytest.fixture(scope="module")
def started(tiny_qwen, tmp_path_factory):
    tiny_dir, tiny_dat = tiny_qwen
    tmp = tmp_path_factory.mktemp("runners")
    vdir = tmp / "varied"
    untie_with_random_head(tiny_dir, tiny_dat, vdir)
    truncated = tmp / "truncated.dat"
    truncated.write_bytes((vdir / "varied.dat").read_bytes()[:100_000])
    # --weight relative to the model dir (cwd is tmp): the original's lookup.
    varied = ["--model-dir", vdir, "--weight", "varied.dat", "--device", "cpu"]
    tiny = ["--model-dir", tiny_dir, "--weight", tiny_dat, "--device", "cpu"]
    short = ["--prompt", "你是誰", "--max-tokens", "4", "--stop-here", "true"]
    spec = {
        "rt2_user": (RT2, USER_RT2 + varied),
        # KV cache vs no cache at all (full replay at every step)
        "rt2_check": (RT2, short + varied + ["--check-logits=true", "--timing=TRUE"]),
        "rt2_nokv": (RT2, short + varied + ["--KVCacheOut=false", "--check-logits", "false"]),
        "rt2_compiled": (RT2, short + varied + ["--compile-step", "--check-logits", "false"]),
        "rt2_fused": (RT2, short + varied + ["--fused-gemv", "--check-logits", "false"]),
        "fp2_compiled": (FP2, USER_FP2 + varied + ["--turns", "2", "--compile-step=true"]),
        "fp2_user": (FP2, USER_FP2 + tiny),
        "fp2_varied": (FP2, USER_FP2 + varied + ["--turns", "2", "--check-logits", "true"]),
        "unknown_flag": (RT2, ["--no-such-flag", "1"]),
        "missing_weight": (RT2, ["--model-dir", vdir, "--weight", "nope/missing.dat"]),
        "truncated": (FP2, ["--model-dir", vdir, "--weight", truncated, "--device", "cpu"]),
        # make validate without the guard: both seed commands at once, then one DevLog entry
        "validate": (VALIDATE, ["--weight", vdir / "varied.dat", "--model-dir", vdir,
                                "--device", "cpu", "--guard", ""]),
    }
    started = {name: Run(tmp, name, *s) for name, s in spec.items()}
    yield started, vdir
    for r in started.values():
        if r.p.poll() is None:
            r.p.kill()


@pytest.fixture
def runs(started):
    return started[0]


def test_user_command_run_training2(runs):
    out = ok(runs["rt2_user"])
    got = answers(out)
    assert list(got) == ["", "1", "2", "3", "31", "4", "5", "6", "7", "8"]
    assert re.search(r"^out tokens count: \d+$", out, re.M)
    assert "[time]" not in out and "[info] logits" not in out
    assert all(len(ids) <= 24 for _, ids in got.values())


def test_kv_cache_and_full_replay_give_the_same_answers(runs):
    cached, replay = answers(ok(runs["rt2_check"])), answers(ok(runs["rt2_nokv"]))
    assert cached == replay
    # and the answers differ from turn to turn: the comparison could not pass by accident
    assert len({tuple(ids) for _, ids in cached.values()}) > 1
    assert answers(ok(runs["rt2_user"]))[""][1][:4] == cached[""][1]


def test_compiled_decode_step_answers_like_the_eager_one(runs):
    """--compile-step: the static decoder's step through torch.compile (inference and training
    paths) gives the same greedy tokens as without it."""
    assert answers(ok(runs["rt2_compiled"])) == answers(ok(runs["rt2_nokv"]))
    assert answers(ok(runs["fp2_compiled"])) == answers(ok(runs["fp2_varied"]))


def test_fused_gemv_answers_like_the_unfused_decoder(runs):
    """--fused-gemv: q/k/v and gate/up through one GEMV each gives the same greedy tokens."""
    assert answers(ok(runs["rt2_fused"])) == answers(ok(runs["rt2_nokv"]))


def test_check_logits_timing_and_stop_here(runs):
    out = ok(runs["rt2_check"])
    assert "[info] logits ok: nan=false inf=false" in out
    diff = re.search(r"max abs diff (\S+)", out)
    assert diff and float(diff.group(1)) < 1e-3
    for pattern in (r"\[time\] load: [\d.]+ s", r"\[time\] promptTokens=\d+",
                    r"\[time\] generate: [\d.]+ ms", r"\[time\] prefill: [\d.]+ ms",
                    r"\[time\] decode: [\d.]+ ms/token, [\d.]+ tok/s"):
        assert re.search(pattern, out), pattern
    assert "stop here" in out
    assert list(answers(out)) == ["", "1", "2", "3", "31", "4", "5", "6"]


def test_user_command_run_training_fp2_does_not_wait_on_stdin(runs):
    out = ok(runs["fp2_user"])   # --ifInteractive defaults to true; stdin is an open pipe
    assert "stdin is not a terminal" in out
    text, ids = answers(out)[""]
    assert len(ids) <= 6


def test_training_path_answers_like_inference_path(runs):
    fp2 = answers(ok(runs["fp2_varied"]))
    rt2 = answers(ok(runs["rt2_user"]))
    assert list(fp2) == ["turn-1", "turn-2"]
    assert fp2["turn-1"][1] == rt2[""][1][:6]          # same greedy tokens, zero deltas
    assert "[info] logits ok: nan=false inf=false" in ok(runs["fp2_varied"])


def test_unknown_flag_exits_2_with_one_usage_line(runs):
    rc, out, err = runs["unknown_flag"].result()
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("usage:") and "--no-such-flag" in lines[0]


def test_validate_runs_both_seed_commands_and_logs_them(runs):
    out = ok(runs["validate"])
    shown = [line for line in out.splitlines() if line.startswith("$ ")]
    assert len(shown) == 2
    assert "scripts/run_training2.py" in shown[0] and shlex.join(USER_RT2[2:]) in shown[0]
    assert "scripts/run_training_fp2.py" in shown[1] and shlex.join(USER_FP2) in shown[1]
    assert out.count("[exit 0,") == 2
    log = Path(os.environ["NVFP4LAB_DEVLOG"]).read_text(encoding="utf-8")
    entry = log[log.rindex("validate varied.dat"):]
    assert shown[0][2:] in entry and shown[1][2:] in entry and "both runners ran" in entry


def test_missing_weight_exits_1_naming_the_file(runs):
    rc, out, err = runs["missing_weight"].result()
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope/missing.dat" in lines[0]


def test_truncated_dat_exits_1_naming_the_file(runs):
    rc, out, err = runs["truncated"].result()
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "truncated.dat" in lines[0]


# ---- in process ----

def test_token_by_token_prefill_and_kept_cache(started):
    """tbt prefill == one-shot prefill == no cache; a cache kept across turns == no cache."""
    vdir = started[1]
    model, tok, _ = runner.load_for_runner(str(vdir / "varied.dat"), str(vdir), "cpu", "float32",
                                           training_path=False)
    ids = encode_prompt(tok, [], "你是誰")
    gens = [runner_generate.generate(model, tok, ids, 5, use_cache=c, token_by_token=t)
            for c, t in ((True, False), (True, True), (False, False))]
    assert gens[0].ids == gens[1].ids == gens[2].ids

    class A:  # the flags Conversation reads
        max_tokens, temp, top_p, seed, ignore_eos, timing = 5, 0.0, 1.0, 123, False, False
    kept = runner_session.Conversation(model, tok, A(), persistent_kv=True)
    fresh = runner_session.Conversation(model, tok, A())
    assert kept.ask("你是誰")[1].ids == fresh.ask("你是誰")[1].ids == gens[0].ids
    second = kept.ask("continue.")[1]
    # The kept cache is a prefix of the context: turn 2 ran only the new tokens, and matches a
    # no-cache run over the same tokens.
    assert 0 < kept.cached_length() < len(kept.context)
    replay = runner_generate.generate(
        model, tok, kept.context[:-len(second.ids) - len(kept.close_ids)], 5, use_cache=False)
    assert replay.ids == second.ids


def test_chat_reads_piped_lines_and_resets(started, monkeypatch, capsys):
    # In process (the import and start-up of another interpreter would cost more than the test).
    spec = importlib.util.spec_from_file_location("chat_cli", CHAT)
    chat_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chat_cli)
    monkeypatch.setattr(sys, "stdin", io.StringIO("你是誰\n/reset\n你是誰\n"))
    vdir = started[1]
    assert chat_cli.main(["--model-dir", str(vdir), "--weight", "varied.dat", "--device", "cpu",
                          "--max-tokens", "3"]) == 0
    before, after = capsys.readouterr().out.split("(history cleared)\n")
    assert after.strip() and before.endswith(after)   # same question, no history: same answer


# ---- flag parsing ----

FLAGS = runner_flags.common_flags("max-tokens", "temp", "timing", "prompt", "dtype") + [
    runner_flags.Flag("KVCacheOut", True, "x", aliases=("kv-cache-out",))]


def test_flag_forms():
    argv = ["--max-tokens", "7", "--temp=0.5", "--timing", "TRUE", "--kvcacheout=False",
            "--prompt=a=b", "--dtype", "BFloat16"]
    a = runner_flags.parse_flags(argv, FLAGS, "t")
    assert (a.max_tokens, a.temp, a.timing, a.KVCacheOut, a.prompt, a.dtype) == \
        (7, 0.5, True, False, "a=b", "bfloat16")
    assert a.given == {"max_tokens", "temp", "timing", "KVCacheOut", "prompt", "dtype"}
    b = runner_flags.parse_flags(["--timing", "--kv-cache-out", "no"], FLAGS, "t")  # bare = true
    assert (b.timing, b.KVCacheOut, b.max_tokens) == (True, False, 20)


@pytest.mark.parametrize("argv", [["--bogus", "1"], ["--timing", "maybe"], ["--max-tokens", "x"],
                                  ["--max-tokens"], ["stray"], ["--dtype", "int8"]])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        runner_flags.parse_flags(argv, FLAGS, "t")
    assert e.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
