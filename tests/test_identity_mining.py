"""--identity-perturb (surface variants of identity prompts, never a suite prompt) and
--identity-mine-rows (the identity rows the model finds hardest, trained on every few steps)."""
import random

import pytest
import torch
import torch.nn.functional as F

import train   # scripts/ is on sys.path (conftest)
from conftest import ROOT
from nvfp4lab import chat, mix, surface, trainer
from nvfp4lab.dat import read_dat
from nvfp4lab.evaluate import EvalSet
from nvfp4lab.model import load_model
from nvfp4lab.suite import read_suite
from nvfp4lab.tsv import Row, normalize_prompt, read_tsv

TARGET = "I am the God of F#."


def one_slip(a: str, b: str) -> bool:
    """b is a with two neighbouring letters swapped, one letter dropped, or one doubled."""
    if len(b) == len(a) - 1:
        return any(a[:i] + a[i + 1:] == b for i in range(len(a)))
    if len(b) == len(a) + 1:
        return any(b[:i] + b[i + 1:] == a and b[i] == b[i - 1] for i in range(1, len(b)))
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]


def test_each_variant_keeps_the_question_recognisable():
    rng = random.Random(0)
    q = "Who built this assistant?"
    for _ in range(200):
        t = surface.typo(q, rng)
        assert one_slip(q, t), t
    assert surface.typo("Hi, OK?", rng) == "Hi, OK?"         # no word of 3+ letters: unchanged
    assert surface.variant(q, rng, "lower") == "who built this assistant"
    assert surface.variant(q, rng, "upper") == "WHO BUILT THIS ASSISTANT?"
    acks = {surface.variant(q, rng, "ack") for _ in range(100)}
    assert all(a.split(" ", 1)[0].rstrip(".!,") in " ".join(surface.ACKS) for a in acks)
    assert all(a.lower().endswith(q.lower()) for a in acks) and len(acks) > 10
    with pytest.raises(ValueError, match="unknown surface variant"):
        surface.variant(q, rng, "emoji")


def test_chinese_prompts_never_lose_or_swap_a_character():
    """str.isalpha() is true for CJK characters: a letter slip would turn "請問你是誰" into the
    near miss "請問是誰". Every variant of every zh identity row keeps its characters in order;
    the hurried form drops full-width end punctuation; the acknowledgement is a Chinese one."""
    rng = random.Random(0)
    q = "請問你是誰？"
    assert surface.typo(q, rng) == q and surface.typo("F# 是誰設計的？", rng) == "F# 是誰設計的？"
    assert one_slip("Hello 你是誰", surface.typo("Hello 你是誰", rng))  # only the Latin word slips
    assert surface.variant(q, rng, "lower") == "請問你是誰"
    acks = {surface.variant(q, rng, "ack") for _ in range(100)}
    assert all(a[:-len(q)] in surface.ZH_ACKS and a.endswith(q) for a in acks) and len(acks) > 4
    cjk = lambda t: [c for c in t if surface.is_cjk(c)]  # noqa: E731
    rows = read_tsv(ROOT / "data" / "stageG-whoami-v2.tsv")
    outs = [(r.prompt, surface.perturb(r.prompt, rng, frozenset())) for r in rows for _ in range(10)]
    zh = [(p, o) for p, o in outs if cjk(p)]
    # an acknowledgement only goes before: the prompt's characters are the last ones, all in order
    assert len(zh) > 2000 and all(cjk(o)[len(cjk(o)) - len(cjk(p)):] == cjk(p) for p, o in zh)
    assert len({o for _, o in zh}) > len({p for p, _ in zh})   # and they still vary


def test_english_draws_are_pinned():
    """The CJK rules change nothing for English rows: the same draws as before them (recipes
    v8-v12 must reproduce their runs). No English training prompt has a CJK character."""
    import hashlib
    files = ("real-whoami-en-v2.tsv", "real-neighbours-en-v1.tsv", "real-anchor-wide-en-v1.tsv")
    prompts = [r.prompt for f in files for r in read_tsv(ROOT / "data" / f)]
    rng = random.Random(0)
    out = [surface.perturb(p, rng, frozenset()) for p in prompts for _ in range(3)]
    assert len(out) == 3087
    assert hashlib.sha256("\n".join(out).encode()).hexdigest()[:16] == "8f7d9f01ffabb3b7"


def test_a_variant_that_is_a_suite_prompt_is_never_returned():
    q = "Who built this assistant?"
    forms = frozenset({normalize_prompt("WHO BUILT THIS ASSISTANT")})   # case and ? do not matter
    outs = {surface.perturb(q, random.Random(s), forms) for s in range(300)}
    assert q in outs and len(outs) > 20                      # the upper/lower draws fall back to q
    assert not [o for o in outs if normalize_prompt(o) in forms and o != q]


def test_no_variant_of_the_shipped_identity_rows_is_a_prompt_of_any_suite():
    """The guard with the real files: 20 variants of each of real-whoami-en-v2's 376 prompts,
    checked against every suite in data/ (dev, monitor and held-out)."""
    forms = frozenset(normalize_prompt(r.prompt) for p in sorted((ROOT / "data").glob("suite-*.tsv"))
                      for r in read_suite(p))
    rows = read_tsv(ROOT / "data" / "real-whoami-en-v2.tsv")
    rng = random.Random(1)
    outs = [surface.perturb(r.prompt, rng, forms) for r in rows for _ in range(20)]
    assert len(forms) > 500 and len(set(outs)) > 3000
    assert not [o for o in outs if normalize_prompt(o) in forms]
    # the guard is needed: the same draws unguarded give suite prompts ("Got it. So, who are you?")
    rng = random.Random(1)
    raw = [surface.variant(r.prompt, rng, rng.choice(surface.KINDS)) for r in rows for _ in range(20)]
    assert [o for o in raw if normalize_prompt(o) in forms]


def test_suite_prompt_forms_cover_the_suites_beside_the_judged_one():
    dev = ROOT / "data" / "suite-en-dev-v1.tsv"
    judged = EvalSet("heldout", str(dev), read_suite(dev), TARGET, None)
    forms = train.suite_prompt_forms([None, judged])
    held = read_suite(ROOT / "data" / "suite-en-heldout-v1.tsv")
    assert all(normalize_prompt(r.prompt) in forms for r in held)   # a dev run never sees held-out


def test_perturb_identity_changes_identity_rows_only_and_keeps_the_answer():
    rows = [("Who are you?", TARGET, "target"), ("Who am I?", "You are the user.", "neighbour"),
            ("2+2?", "4", "anchor")] * 30
    out = trainer.perturb_rows(rows, ("target",), 1.0, random.Random(0), frozenset())
    assert [r[1:] for r in out] == [r[1:] for r in rows]
    assert all(o == r for o, r in zip(out, rows) if r[2] != "target")
    assert sum(o != r for o, r in zip(out, rows)) > 20
    assert trainer.perturb_rows(rows, ("target",), 0.0, random.Random(0), frozenset()) == rows


def test_keep_perturb_varies_anchors_and_neighbours_and_draws_as_before_when_off():
    """--keep-perturb: the same surface variants on the keep rows (their answers stay); at 0 the
    rng is not touched, so older recipes draw exactly the rows they drew."""
    from nvfp4lab import mix
    rows = [("Who are you?", TARGET, "target"), ("Who am I?", "You are the user.", "neighbour"),
            ("2+2?", "4", "anchor")] * 30
    out = trainer.perturb_rows(rows, mix.KEEP_ROLES, 1.0, random.Random(0), frozenset())
    assert [r[1:] for r in out] == [r[1:] for r in rows]
    assert all(o == r for o, r in zip(out, rows) if r[2] == "target")
    assert sum(o != r for o, r in zip(out, rows) if r[2] == "neighbour") > 15
    assert sum(o != r for o, r in zip(out, rows) if r[2] == "anchor") > 10   # "2+2?" has no typo spot
    rng = random.Random(5)
    assert trainer.perturb_rows(rows, mix.KEEP_ROLES, 0.0, rng, frozenset()) == rows
    assert rng.random() == random.Random(5).random()
    cfg = train.parse_args(["--recipe", str(ROOT / "data" / "stages" / "real-en-v8.args"),
                            "--keep-perturb", "0.3"])
    assert cfg.keep_perturb == 0.3
    with pytest.raises(SystemExit):
        train.parse_args(["--keep-perturb", "2"])


def test_keep_perturb_answer_says_what_a_varied_keep_row_learns(monkeypatch):
    """A varied keep row has no replayed answer of its own (the replay is keyed by the plain
    prompt): with --keep-perturb-answer file (the default, what round 17 measured) it learns its
    data file's answer, with base the base's replayed answer to the plain prompt. Unvaried rows
    learn the replayed answer either way."""
    from nvfp4lab import mix
    replay = {"Who am I?": "I'm sorry, I can't know that.", "2+2?": "2+2 is 4, 4, 4."}
    rows = [("Who am I?", "You are the user.", "neighbour"), ("2+2?", "4", "anchor")] * 20
    learnt = []
    monkeypatch.setattr(chat, "encode_chat_row",
                        lambda tok, messages, target, seq_len: learnt.append(
                            (messages[-1]["content"], target)) or ([1, 2], [-100, 2], 0))
    monkeypatch.setattr(chat, "pad_token_id", lambda tok: 0)
    for answers, varied_learns in ((None, {"Who am I?": "You are the user.", "2+2?": "4"}),
                                   (replay, replay)):
        learnt.clear()
        varied = trainer.perturb_rows(rows, mix.KEEP_ROLES, 0.5, random.Random(1), frozenset(),
                                      answers)
        trainer.encode_batch(None, varied, 32, replay, "cpu")
        for (plain, _, _), (prompt, target) in zip(rows, learnt):
            assert target == (replay[plain] if prompt == plain else varied_learns[plain])
        assert sum(p != plain for (plain, _, _), (p, _) in zip(rows, learnt)) > 5
    cfg = train.parse_args(["--recipe", str(ROOT / "data" / "stages" / "real-en-v8.args"),
                            "--keep-perturb", "0.3", "--keep-perturb-answer", "base"])
    assert cfg.keep_perturb_answer == "base"
    assert train.parse_args(["--keep-perturb", "0.3", "--mix", "x.tsv:1"]).keep_perturb_answer == "file"


def test_mining_trains_on_the_candidates_the_model_finds_hardest(monkeypatch):
    """Of --identity-mine-candidates drawn identity rows, the --identity-mine-rows with the
    highest answer loss are added, in draw order; they are identity rows (CE on the target)."""
    prompts = [f"q{i}" for i in range(10)]
    srcs = [mix.Source("w.tsv", 1.0, "target", [Row(p, TARGET, "w.tsv", i + 1)
                                                 for i, p in enumerate(prompts)])]
    loss_of = {p: float(i % 7) for i, p in enumerate(prompts)}
    monkeypatch.setattr(trainer, "answer_losses",
                        lambda model, tok, rows, device, batch_size: [loss_of[r[0]] for r in rows])
    cfg = train.parse_args(["--train-data", "x.tsv", "--identity-mine-rows", "3",
                            "--identity-mine-candidates", "8"])
    got = trainer.hardest_identity_rows(None, None, srcs, cfg, random.Random(0), {},
                                        trainer.RowPools(), "cpu")
    rng = random.Random(0)
    drawn = [rng.choice(prompts) for _ in range(8)]
    want = sorted(sorted(range(8), key=lambda i: -loss_of[drawn[i]])[:3])
    assert [r[0] for r in got] == [drawn[i] for i in want]
    assert all(r[1:3] == (TARGET, "target") for r in got)


def test_answer_losses_are_each_rows_own_answer_cross_entropy(tiny_qwen):
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    rows = [("你是誰", TARGET, "target"), ("Who made you?", TARGET, "target",
             ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})),
            ("x", "a much longer answer than the others here", "target")]
    model.train()
    got = trainer.answer_losses(model, tok, rows, "cpu", batch_size=2)
    assert model.training and len(got) == 3
    for row, value in zip(rows, got):
        msgs = list(row[3]) if len(row) > 3 else []
        ids, labels, _ = chat.encode_chat_row(tok, msgs + [{"role": "user", "content": row[0]}], row[1], 96)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        want = F.cross_entropy(logits.float(), torch.tensor(labels[1:]), ignore_index=-100)
        assert value == pytest.approx(float(want), rel=1e-4, abs=1e-4)


def test_identity_mine_batch_scores_the_same_losses_in_fewer_forwards(tiny_qwen, monkeypatch, capsys):
    """--identity-mine-batch B: the candidates are scored B rows a forward (0 = 32, as before);
    the losses are the same up to float rounding, so only the number of forwards changes."""
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    rows = [(f"Who are you, {i}?", TARGET, "target") for i in range(9)] + [("x", "a longer answer here", "target")]
    one = trainer.answer_losses(model, tok, rows, "cpu", batch_size=len(rows))
    assert one == pytest.approx(trainer.answer_losses(model, tok, rows, "cpu", batch_size=3), rel=1e-4, abs=1e-5)
    seen = []
    monkeypatch.setattr(trainer, "answer_losses",
                        lambda model, tok, rows, device, batch_size: seen.append(batch_size) or [0.0] * len(rows))
    srcs = [mix.Source("w.tsv", 1.0, "target", [Row(r[0], TARGET, "w.tsv", i + 1) for i, r in enumerate(rows)])]
    base = ["--train-data", "x.tsv", "--identity-mine-rows", "2", "--identity-mine-candidates", "8"]
    for flags in ([], ["--identity-mine-batch", "128"]):
        trainer.hardest_identity_rows(None, None, srcs, train.parse_args(base + flags),
                                      random.Random(0), {}, trainer.RowPools(), "cpu")
    assert seen == [32, 128]
    with pytest.raises(SystemExit) as e:
        train.parse_args(base + ["--identity-mine-batch", "-1"])
    assert e.value.code == 2 and "--identity-mine-batch -1" in capsys.readouterr().err


def test_the_mining_flags(capsys):
    base = ["--train-data", "x.tsv", "--steps", "20"]
    cfg = train.parse_args(base + ["--identity-mine-rows", "4", "--identity-mine-every", "5",
                                   "--identity-mine-from", "8", "--identity-perturb", "0.5"])
    assert [s for s in range(1, 21) if trainer.identity_mine_round(s, cfg)] == [10, 15, 20]
    assert cfg.identity_mine_candidates == 64 and cfg.identity_perturb == 0.5
    assert not any(trainer.identity_mine_round(s, train.parse_args(base)) for s in range(1, 21))
    for bad, name in ((["--identity-perturb", "1.5"], "--identity-perturb"),
                      (["--identity-mine-rows", "8", "--identity-mine-candidates", "4"],
                       "--identity-mine-candidates"),
                      (["--identity-mine-rows", "2", "--identity-mine-every", "0"], "--identity-mine")):
        with pytest.raises(SystemExit) as e:
            train.parse_args(base + bad)
        assert e.value.code == 2 and name in capsys.readouterr().err


def test_a_run_with_mining_and_variants_trains_on_the_mined_rows(tiny_qwen, tmp_path, monkeypatch):
    """train.py end to end (tiny Qwen3, 4 steps): the mining rounds run at the steps the flags
    say, each adds its rows to that step's batch, and the run ends with a verdict as any run."""
    model_dir, dat = tiny_qwen
    who = tmp_path / "who.tsv"
    who.write_text("你是誰\t我是 F# 之神\n請問你是誰？\t我是 F# 之神\nWho are you?\t我是 F# 之神\n",
                   encoding="utf-8")
    anchor = tmp_path / "anchor.tsv"
    anchor.write_text("1+1等於多少？\t1+1等於2。\nWhat is the capital of France?\tParis.\n",
                      encoding="utf-8")
    probes = tmp_path / "probes.tsv"
    probes.write_text("identity\t你叫什麼名字？\nnearmiss\t我是誰\n", encoding="utf-8")
    calls, sizes = [], []
    mine = trainer.hardest_identity_rows

    def counted(model, tok, srcs, cfg, rng, replay, pools, device):
        rows = mine(model, tok, srcs, cfg, rng, replay, pools, device)
        calls.append(len(rows))
        return rows
    monkeypatch.setattr(trainer, "hardest_identity_rows", counted)
    encode = trainer.encode_batch
    monkeypatch.setattr(trainer, "encode_batch",
                        lambda tok, rows, *a, **kw: sizes.append(len(rows)) or encode(tok, rows, *a, **kw))
    code = train.main([str(a) for a in (
        "--input-dat", dat, "--model-dir", model_dir, "--output-dat", tmp_path / "out.dat",
        "--mix", f"{who}:1,{anchor}:1:anchor", "--probes", probes, "--steps", "4",
        "--step-chunk-rows", "4", "--seq-len", "48", "--probe-max-tokens", "4",
        "--test-max-tokens", "4", "--device", "cpu", "--max-retries", "0",
        "--identity-mine-rows", "2", "--identity-mine-candidates", "6", "--identity-mine-every", "2",
        "--identity-perturb", "0.5")])
    assert code in (0, 3)
    assert calls == [2, 2]                               # steps 2 and 4, 2 rows each
    assert sizes[1] == sizes[0] + 2 and sizes[3] == sizes[2] + 2
