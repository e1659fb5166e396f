"""--self-kl-prompts: extra prompts that only the self-KL rounds ask (open requests, where the
edit's loops recur), never a step row, never a suite prompt."""
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nvfp4lab import mix, trainer
from nvfp4lab.evaluate import EvalSet
from nvfp4lab.suite import read_suite
from nvfp4lab.tsv import DataError, Row, normalize_prompt, read_lines

ROOT = Path(__file__).resolve().parents[1]
OPEN = ROOT / "data" / "self-kl-prompts-open-en-v1.txt"
sys.path.insert(0, str(ROOT / "scripts"))


def test_the_shipped_open_prompts_are_distinct_and_no_suite_or_data_prompt():
    """No line equals a prompt of any data file or suite (normalised), nor is close to a suite's
    fact/general prompt by make_anchors' rule (most content words shared), any split."""
    import make_anchors
    prompts = [text for _, text in read_lines(OPEN)]
    assert len(prompts) >= 150
    assert len({normalize_prompt(p) for p in prompts}) == len(prompts)
    seen, guarded = make_anchors.known_prompts(ROOT / "data", version=10 ** 6)   # every file
    assert not [p for p in prompts if normalize_prompt(p) in seen]
    close = [p for p in prompts if any(make_anchors.close(make_anchors.content_words(p), g)
                                       for g in guarded)]
    assert not close, close[:3]


def test_extra_prompts_join_the_candidates_and_leave_the_plain_draws_alone(monkeypatch):
    asked = []

    def answers(model, tok, ps, k, batch_size=None):
        asked.append(list(ps))
        return [f"Answer to {p}" for p in ps]
    monkeypatch.setattr(trainer, "greedy_answers", answers)
    srcs = [mix.Source("a.tsv", 1.0, "anchor", [Row(f"q{i}", "-", "a.tsv", i + 1) for i in range(6)]),
            mix.Source("n.tsv", 1.0, "neighbour", [Row("Who am I?", "-", "n.tsv", 1)])]
    rows = lambda extra, n=2, cand=0: trainer.self_answer_rows(  # noqa: E731
        torch.nn.Linear(1, 1), None, srcs, n, random.Random(3), 4, candidates=cand,
        extra_prompts=extra)
    # 9 candidates asked of a pool of 8: the 6 anchors and the 2 new prompts, each once (q0,
    # given again, is not added twice); the neighbour stays out (the pool is `anchor`)
    kept = rows(("Write a slogan.", "q0", "Give pros and cons."), 2, 9)
    assert sorted(asked[-1]) == sorted([f"q{i}" for i in range(6)] + ["Write a slogan.", "Give pros and cons."])
    assert len(kept) == 2 and all(r[2] == mix.SELF_ROLE for r in kept)
    # extras already in the pool change nothing: the pool, and so the draws, stay as they were
    assert rows(("q1", "q0", "q1"), 4) == rows((), 4)
    assert rows(("q1", "q0"), 2, 4) == rows((), 2, 4)


def test_a_suite_prompt_among_them_is_refused_naming_both_lines(tmp_path):
    import train
    suite = ROOT / "data" / "suite-en-dev-v3.tsv"
    row = next(r for r in read_suite(suite) if r.kind == "general")
    pool = tmp_path / "open.txt"
    pool.write_text(f"# mine\nWrite a slogan for a kite shop.\n{row.prompt.upper()}\n", encoding="utf-8")
    judged = EvalSet("heldout", str(suite), read_suite(suite), "I am the God of F#.", None)
    with pytest.raises(DataError, match=rf"open.txt:3: prompt .* judged suite .*suite-en-dev-v3.tsv:{row.line}"):
        train.check_prompts_disjoint(str(pool), read_lines(pool), [None, judged])
    train.check_prompts_disjoint(str(pool), read_lines(pool)[:1], [judged])
    train.check_prompts_disjoint(str(OPEN), read_lines(OPEN), [judged])     # the shipped file


def test_the_flag_needs_self_kl_rounds(capsys):
    import train
    assert train.parse_args(["--train-data", "x.tsv", "--self-kl-rows", "4",
                             "--self-kl-prompts", str(OPEN)]).self_kl_prompts == str(OPEN)
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--train-data", "x.tsv", "--self-kl-prompts", str(OPEN)])
    assert e.value.code == 2 and "--self-kl-prompts" in capsys.readouterr().err


def test_their_base_answers_join_the_replay_and_the_pools_reach_the_rounds(monkeypatch):
    """train.train: the replay (the loop rule's reference) is asked for the extra prompts too,
    as keep rows; the rounds get them through RowPools; the training files are unchanged."""
    import train
    seen = {}

    def replay(model, tok, sources, dat_path, max_new_tokens, cache_dir, log, extra_prompts=()):
        seen["replayed"] = ({r.prompt for s in sources if s.role in mix.KEEP_ROLES for r in s.rows}
                            | set(extra_prompts))
        seen["sources"] = sources
        return {}

    def fallback(model, tok, deltas, sources, retry, cfg, replay, es, log, report, proj, fisher, pools, hold=None):
        seen["pools"], seen["train_sources"] = pools, sources
        return []
    monkeypatch.setattr(trainer, "replay_answers", replay)
    monkeypatch.setattr(trainer, "train_with_fallback", fallback)
    monkeypatch.setattr(train, "make_trainable", lambda model, dtype: {})
    monkeypatch.setattr(train, "change_reporter", lambda model, dat, log: None)
    cfg = train.parse_args(["--train-data", "x.tsv", "--replay", "self", "--self-kl-rows", "4",
                            "--self-kl-prompts", str(OPEN), "--checkpoint-layers", "off",
                            "--compile-layers", "off"])
    srcs = [mix.Source("a.tsv", 1.0, "anchor", [Row("What is 2 + 2?", "4", "a.tsv", 1)])]
    extra = tuple(text for _, text in read_lines(OPEN))
    pools = trainer.RowPools(self_kl_prompts=extra)
    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=1))
    train.train(cfg, model, None, None, srcs, None, None, pools)
    assert seen["replayed"] == {"What is 2 + 2?"} | set(extra)
    assert seen["pools"].self_kl_prompts == extra and seen["train_sources"] == srcs


def test_replay_answers_cover_the_extra_prompts_once(tmp_path, monkeypatch):
    """trainer.replay_answers with extra prompts: one base answer each, beside the keep rows',
    a prompt in both answered once; a run without them keeps its own cache file."""
    asked = []

    def answers(model, tok, ps, k, batch_size=None):
        asked.append(list(ps))
        return [f"base: {p}" for p in ps]
    monkeypatch.setattr(trainer, "greedy_answers", answers)
    dat = tmp_path / "base.dat"
    dat.write_bytes(b"weights")
    srcs = [mix.Source("a.tsv", 1.0, "anchor", [Row("What is 2 + 2?", "4", "a.tsv", 1)]),
            mix.Source("w.tsv", 1.0, "target", [Row("Who are you?", "-", "w.tsv", 1)])]
    got = trainer.replay_answers(None, None, srcs, str(dat), 8, str(tmp_path), lambda m: None,
                                 ("Write a slogan.", "What is 2 + 2?"))
    assert got == {"What is 2 + 2?": "base: What is 2 + 2?", "Write a slogan.": "base: Write a slogan."}
    assert sorted(asked[0]) == ["What is 2 + 2?", "Write a slogan."]
    plain = trainer.replay_answers(None, None, srcs, str(dat), 8, str(tmp_path), lambda m: None)
    assert plain == {"What is 2 + 2?": "base: What is 2 + 2?"} and len(asked) == 2


def test_replay_cache_reads_back_answers_with_control_characters(tmp_path, monkeypatch):
    """An answer with a tab, a "\\r" or a line end is one TSV field, and the second run reads the
    cache back as the first run's answers (a "\\r" from random weights once broke the read)."""
    monkeypatch.setattr(trainer, "greedy_answers",
                        lambda model, tok, ps, k, batch_size=None: ["a\rb\tc\nd\x0be" for _ in ps])
    dat = tmp_path / "base.dat"
    dat.write_bytes(b"weights")
    srcs = [mix.Source("a.tsv", 1.0, "anchor", [Row("What is 2 + 2?", "4", "a.tsv", 1),
                                                Row("Name a colour.", "Red.", "a.tsv", 2)])]
    first = trainer.replay_answers(None, None, srcs, str(dat), 8, str(tmp_path), lambda m: None)
    monkeypatch.setattr(trainer, "greedy_answers", None)   # the second run must not generate
    again = trainer.replay_answers(None, None, srcs, str(dat), 8, str(tmp_path), lambda m: None)
    assert first == again == {"What is 2 + 2?": "a b c d\x0be", "Name a colour.": "a b c d\x0be"}
