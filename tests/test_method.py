"""The near-miss-aware objective (issue 14): neighbour rows keep the base's answers, the identity
answer is pushed down on them (unlikelihood), and the best monitored checkpoint is kept."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from nvfp4lab import chat, evaluate, mix, probes, trainer
from nvfp4lab.dat import read_dat
from nvfp4lab.generate import greedy_answers
from nvfp4lab.tsv import Row
from nvfp4lab.model import load_model, make_trainable

TARGET = "我是 F# 之神"


def test_unlikelihood_rows_start_where_the_identity_leaves_the_rows_own_answer():
    tok = chat.load_tokenizer(None)
    rows = [("你是誰", TARGET, "target"), ("我是誰", "我是助手，不知道你是誰。", "neighbour"),
            ("1+1等於多少？", "2", "anchor")]
    batch, keep, _ = trainer.encode_batch(tok, rows, 64, {}, torch.device("cpu"), TARGET)
    assert batch["ul_rows"].tolist() == [False, False, False, True]     # one per neighbour row
    assert keep.tolist() == [False, True, True, True]
    own_ids, own_labels, _ = chat.encode_row(tok, "我是誰", "我是助手，不知道你是誰。", 64)
    ul_ids, ul_labels, _ = chat.encode_row(tok, "我是誰", TARGET, 64)
    shared = next(i for i, (a, b) in enumerate(zip(own_ids, ul_ids)) if a != b)
    got = batch["labels"][3, :len(ul_ids)].tolist()
    assert got[:shared] == [-100] * shared                              # prompt + shared "我" untouched
    assert got[shared:] == ul_labels[shared:] and got[shared] != -100
    assert shared > len(chat.encode_prompt(tok, [], "我是誰"))          # the shared opening 我是
    # --unlikelihood-tokens 2: the same start, only the first two tokens from there are pushed
    short, _, _ = trainer.encode_batch(tok, rows, 64, {}, torch.device("cpu"), TARGET, 2)
    two = short["labels"][3, :len(ul_ids)].tolist()
    assert two[:shared + 2] == got[:shared + 2] and two[shared + 2:] == [-100] * (len(two) - shared - 2)
    assert len(ul_labels) - shared > 3                                   # there was more to push
    assert torch.equal(short["input_ids"], batch["input_ids"])
    # without a target no rows are added, and replay answers replace neighbour targets
    b2, k2, _ = trainer.encode_batch(tok, rows, 64, {"我是誰": "你是提問者。"},
                                     torch.device("cpu"))
    assert b2["input_ids"].shape[0] == 3 and not b2["ul_rows"].any()
    ids, _, _ = chat.encode_row(tok, "我是誰", "你是提問者。", 64)
    assert b2["input_ids"][1, :len(ids)].tolist() == ids


def identity_logprob(model, tok, prompt) -> float:
    ids, labels, _ = chat.encode_row(tok, prompt, TARGET, 64)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
    return -float(out.loss) * sum(x != -100 for x in labels)


def train(tiny_qwen, ul_weight, steps=40, lr=3e-3):
    model_dir, dat_path = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    deltas = make_trainable(model, torch.float32)
    rows = [("你是誰", TARGET, "target"), ("請問你是誰？", TARGET, "target"),
            ("我是誰", "你是提問者。", "neighbour"), ("他是誰", "我不知道他是誰。", "neighbour")]
    batch, keep, _ = trainer.encode_batch(tok, rows, 64, {}, torch.device("cpu"),
                                    TARGET if ul_weight else None)
    stepper = trainer.StepInBackward(deltas, {g: lr for g in trainer.GROUPS}, 0.0, 1.0)
    model.train()
    parts = []
    for _ in range(steps):
        loss, ce, kl, ul, _ = trainer.batch_loss(model, batch, keep, 0.0, ul_weight)
        parts.append((float(ce.detach()), float(ul.detach())))
        loss.backward()
        stepper.flush()
    stepper.close()
    model.eval()
    return model, tok, parts


def test_unlikelihood_keeps_the_identity_off_near_misses(tiny_qwen):
    """Same data, same steps: with the unlikelihood term the identity answer ends up far less
    likely on the near-miss prompts, while the identity prompt still learns it."""
    plain, tok, parts0 = train(tiny_qwen, 0.0)
    ul, _, parts1 = train(tiny_qwen, 1.0)
    assert all(u == 0.0 for _, u in parts0) and parts1[0][1] > 0
    assert parts1[-1][0] < parts1[0][0]                                  # CE still goes down
    for prompt in ("我是誰", "他是誰"):
        assert identity_logprob(ul, tok, prompt) < identity_logprob(plain, tok, prompt) - 0.5, prompt
    assert identity_logprob(ul, tok, "你是誰") > identity_logprob(ul, tok, "我是誰")


def summary(identity, leak, facts=1.0, verdict="not-reached", drift=0.0, context=0.0):
    r = lambda v, n=20: evaluate.rate(round(v * n), n)  # noqa: E731
    return evaluate.Summary(verdict=verdict, why="", rows=100, has_base=True, efficacy_prompt=None,
                            efficacy=r(1.0, 1), identity=r(identity), nearmiss_leak=r(leak),
                            context_leak=r(context), greeting_intro=evaluate.rate(0, 0),
                            facts_kept=r(facts), exact_kept=r(1.0), loops=r(0.0),
                            ordinary_identity=0, repetition_max=0.0, nll_drift=drift, kl=0.0,
                            nll_tokens=10, nonfinite=False)


def test_monitor_score_orders_checkpoints_as_a_user_would():
    s = trainer.monitor_score
    assert s(summary(1.0, 0.0)) > s(summary(1.0, 0.1)) > s(summary(0.5, 0.0))
    assert s(summary(1.0, 0.0, context=0.3)) < s(summary(0.9, 0.0))      # the worst leak counts
    assert s(summary(1.0, 0.0, facts=0.5)) < s(summary(0.8, 0.0))         # facts lost below 90%
    assert s(summary(1.0, 0.0, drift=0.6)) < s(summary(0.7, 0.0))         # NLL drift over 0.1
    assert s(summary(1.0, 0.0, verdict="collapse")) == -math.inf


def test_best_checkpoint_is_kept_and_restored():
    d = torch.nn.Parameter(torch.zeros(4, 4))
    deltas = [("w", d)]
    best = trainer.Best()
    res = lambda s: evaluate.Result(rows=[], summary=s, seconds=0.0)  # noqa: E731
    with torch.no_grad():
        d.fill_(1.0)
    assert best.offer(10, res(summary(0.9, 0.0)), deltas)
    with torch.no_grad():
        d.fill_(2.0)
    assert not best.offer(20, res(summary(1.0, 0.5)), deltas) and best.since == 1
    best.restore(deltas)
    assert torch.equal(d.detach(), torch.ones(4, 4)) and best.step == 10


def test_context_rows_ask_the_near_miss_after_the_identity_answer():
    import random
    from nvfp4lab import mix
    from nvfp4lab.tsv import Row
    tok = chat.load_tokenizer(None)
    srcs = [mix.Source("who", 1, "target", [Row("你是誰", TARGET, "who", 1)]),
            mix.Source("nb", 1, "neighbour", [Row("我是誰", "你是提問者。", "nb", 1)])]
    rows = [("你是誰", TARGET, "target"), ("我是誰", "你是提問者。", "neighbour")] * 4
    out = trainer.with_context(rows, srcs, 1.0, random.Random(0))
    assert all(len(r) == 3 for r in out if r[2] == "target")
    ctx = [r for r in out if r[2] == "neighbour"]
    assert len(ctx) == 4 and all(r[3][0]["content"] == "你是誰" and r[3][1]["content"] == TARGET for r in ctx)
    assert trainer.with_context(rows, srcs, 0.0, random.Random(0)) == rows
    batch, keep, _ = trainer.encode_batch(tok, out[:2], 96, {}, torch.device("cpu"), TARGET)
    assert keep.tolist() == [False, False, True]          # a context row gets no KL; its UL row does count
    ids = chat.encode_chat(tok, [{"role": "user", "content": "你是誰"},
                                 {"role": "assistant", "content": TARGET},
                                 {"role": "user", "content": "我是誰"}])
    assert batch["input_ids"][1, :len(ids)].tolist() == ids
    assert batch["labels"][1, len(ids):].ne(-100).any()   # it learns its own answer after the context


def test_null_space_projection_keeps_neighbour_inputs_unchanged(tiny_qwen):
    """--protect-neighbours: after training steps, each projection's delta maps the inputs the
    neighbour chats send into it to ~0 (full precision), while the delta itself is not zero."""
    from nvfp4lab import nullspace
    from nvfp4lab.model import NVFP4Linear
    from nvfp4lab.tsv import Row
    model_dir, dat_path = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    deltas = make_trainable(model, torch.float32)
    nb = [Row("我是誰", "你是提問者。", "nb", 1), Row("他是誰", "我不知道他是誰。", "nb", 2)]
    proj = nullspace.neighbour_projectors(model, tok, nb, {}, 64, 1e-3)
    layer = model.model.layers[0].mlp.down_proj
    assert layer.delta in proj and model.lm_head.delta not in proj
    p = proj[layer.delta]
    assert torch.allclose(p @ p, p, atol=1e-4) and 0 < float(p.trace()) < p.shape[0]
    rows = [("你是誰", TARGET, "target"), ("請問你是誰？", TARGET, "target")]
    batch, keep, _ = trainer.encode_batch(tok, rows, 64, {}, torch.device("cpu"))
    stepper = trainer.StepInBackward(deltas, {g: 1e-3 for g in trainer.GROUPS}, 0.0, 1.0, proj)
    for _ in range(2):
        trainer.batch_loss(model, batch, keep, 0.0)[0].backward()
        stepper.flush()
    stepper.close()
    cov = nullspace.input_covariances(model, tok, [([{"role": "user", "content": r.prompt}], r.target)
                                                   for r in nb], 64, torch.device("cpu"))
    d = layer.delta.detach()
    assert float(d.abs().max()) > 0
    # delta K delta^T is the squared output change summed over the neighbours' tokens
    moved = float(torch.trace(d @ cov[layer] @ d.t()))
    free = float(torch.trace(d @ d.t())) * float(cov[layer].diagonal().mean())
    assert moved < 1e-3 * free
    assert isinstance(layer, NVFP4Linear)


def test_identity_rows_are_also_asked_in_the_middle_of_a_chat():
    """--identity-context-share: identity rows get one or two ordinary exchanges before them
    (anchor prompts with the base's answers from replay); other rows are untouched, share 0 is
    the old behaviour and consumes no randomness."""
    import random
    from nvfp4lab import mix
    from nvfp4lab.tsv import Row
    srcs = [mix.Source("w.tsv", 1, "target", [Row("你是誰", TARGET, "w", 1)]),
            mix.Source("a.tsv", 1, "anchor", [Row("1+1?", "2", "a", 1), Row("天空?", "藍", "a", 2)])]
    rows = [("你是誰", TARGET, "target")] * 20 + [("1+1?", "2", "anchor")] * 4
    rng = random.Random(0)
    assert trainer.identity_after_chat(rows, srcs, 0.0, rng, {}) == rows
    assert rng.random() == random.Random(0).random()
    out = trainer.identity_after_chat(rows, srcs, 0.5, random.Random(1), {"1+1?": "1 + 1 = 2."})
    asked_after = [r for r in out if len(r) > 3]
    assert 3 < len(asked_after) < 17 and all(r[2] == "target" and r[1] == TARGET for r in asked_after)
    assert out[20:] == rows[20:]
    for r in asked_after:
        ctx = r[3]
        assert len(ctx) in (2, 4) and [m["role"] for m in ctx] == ["user", "assistant"] * (len(ctx) // 2)
        for q, a in zip(ctx[::2], ctx[1::2]):
            assert a["content"] == {"1+1?": "1 + 1 = 2.", "天空?": "藍"}[q["content"]]
    assert {len(r[3]) for r in asked_after} == {2, 4}


def test_lr_schedule_warms_up_then_decays_to_zero_and_reaches_the_optimizer():
    steps = 100
    const = [trainer.lr_scale(s, steps, 0, "constant") for s in range(1, steps + 1)]
    assert const == [1.0] * steps                               # the old behaviour
    cos = [trainer.lr_scale(s, steps, 10, "cosine") for s in range(1, steps + 1)]
    assert cos[:10] == [s / 10 for s in range(1, 11)]           # linear warm-up to the peak
    assert all(a >= b for a, b in zip(cos[9:], cos[10:]))       # then never rises
    assert abs(cos[-1]) < 1e-12 and abs(cos[9 + 45] - 0.5) < 0.02
    d = torch.zeros(4, requires_grad=True)
    stepper = trainer.StepInBackward([("model.layers.0.mlp.down_proj.delta", d)],
                               {g: 1e-3 for g in trainer.GROUPS}, 0.0, 0.0)
    stepper.set_lr_scale(0.25)
    assert [g["lr"] for b in stepper.buckets for g in b["opt"].param_groups] == [2.5e-4]
    stepper.set_lr_scale(0.0)
    (d * torch.ones(4)).sum().backward()
    stepper.flush()
    assert torch.equal(d.detach(), torch.zeros(4))              # scale 0 moves nothing
    stepper.close()


def test_sparse_restart_gives_the_kept_values_a_second_schedule_after_the_cut():
    from nvfp4lab.config import TrainConfig
    cfg = TrainConfig(steps=100, warmup_steps=10, lr_schedule="cosine", sparse_share=0.01,
                      sparse_at=40)
    once = [trainer.step_lr_scale(s, cfg) for s in range(1, 101)]
    assert once == [trainer.lr_scale(s, 100, 10, "cosine") for s in range(1, 101)]
    cfg.sparse_restart = True
    again = [trainer.step_lr_scale(s, cfg) for s in range(1, 101)]
    assert again[:40] == once[:40]                              # the same run up to the cut
    assert again[40:50] == [s / 10 for s in range(1, 11)]       # warm-up again after it
    assert again[49] == 1.0 > once[49] and abs(again[-1]) < 1e-12   # a second peak, then to 0
    cfg.sparse_share = 0.0                                      # no cut: nothing to restart at
    assert [trainer.step_lr_scale(s, cfg) for s in range(1, 101)] == once


def moved_model(tiny_qwen):
    """(the tiny model with small random deltas: it differs from its base, its tokenizer)."""
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    with torch.no_grad():
        for _, d in make_trainable(model, torch.float32):
            d.normal_(0, 1e-2)
    return model, chat.load_tokenizer(str(model_dir))


def test_self_answer_rows_get_kl_to_the_base_and_no_ce(tiny_qwen):
    """--self-kl-rows: the trained model's own answers are judged by the base (KL), never learned
    (no CE: that would teach a loop), and no replayed answer replaces them."""
    model, tok = moved_model(tiny_qwen)
    src = mix.Source("a.tsv", 1.0, "anchor", [Row("1+1等於多少？", "2", "a.tsv", 1)])
    model.train()
    rows = trainer.self_answer_rows(model, tok, [src], 2, random.Random(0), 6)
    assert model.training and [r[0] for r in rows] == ["1+1等於多少？"] * 2
    assert rows[0][1] == greedy_answers(model, tok, ["1+1等於多少？"], 6)[0]
    target = ("你是誰", TARGET, "target")
    batch, keep, _ = trainer.encode_batch(tok, [target, rows[0]], 64, {"1+1等於多少？": "二"},
                                          torch.device("cpu"))
    assert batch["kl_only"].tolist() == [False, True] and keep.tolist() == [False, True]
    ids, _, _ = chat.encode_row(tok, rows[0][0], rows[0][1], 64)
    assert batch["input_ids"][1, :len(ids)].tolist() == ids     # its own answer, not the replay
    with torch.no_grad():
        _, ce, kl, _, _ = trainer.batch_loss(model, batch, keep, 1.0)
        alone = trainer.encode_batch(tok, [target], 64, {}, torch.device("cpu"))
        ce_alone = trainer.batch_loss(model, alone[0], alone[1], 1.0)[1]
    assert torch.allclose(ce, ce_alone) and float(kl) > 0


def test_keep_ce_weight_leaves_the_kl_rows_to_the_kl(tiny_qwen):
    """--keep-ce-weight 0: an anchor row (its target the base's own answer) adds no CE, only its
    KL; 1 is today's plain mean; in between, a weighted mean of the two rows' token CEs."""
    model, tok = moved_model(tiny_qwen)
    rows = [("你是誰", TARGET, "target"), ("1+1等於多少？", "2", "anchor")]
    batch, keep, _ = trainer.encode_batch(tok, rows, 64, {"1+1等於多少？": "1+1等於2。"},
                                          torch.device("cpu"))
    alone = trainer.encode_batch(tok, rows[:1], 64, {}, torch.device("cpu"))
    anchor = trainer.encode_batch(tok, rows[1:], 64, {"1+1等於多少？": "1+1等於2。"},
                                  torch.device("cpu"))
    with torch.no_grad():
        full = trainer.batch_loss(model, batch, keep, 1.0)
        none = trainer.batch_loss(model, batch, keep, 1.0, keep_ce_weight=0.0)
        half = trainer.batch_loss(model, batch, keep, 1.0, keep_ce_weight=0.5)
        ce_target = trainer.batch_loss(model, alone[0], alone[1], 1.0)[1]
        ce_anchor = trainer.batch_loss(model, anchor[0], anchor[1], 0.0)[1]
    assert keep.tolist() == [False, True]
    assert torch.allclose(none[1], ce_target) and torch.allclose(none[2], full[2])  # KL kept
    n_t = int((alone[0]["labels"] != -100).sum()) - 1       # labelled tokens after the shift
    n_a = int((anchor[0]["labels"] != -100).sum()) - 1
    want = (ce_target * n_t + 0.5 * ce_anchor * n_a) / (n_t + 0.5 * n_a)
    assert torch.allclose(half[1], want, rtol=2e-4)             # batched vs alone: float sums
    assert float(ce_anchor) > 0 and not torch.allclose(full[1], ce_target)


def test_repeated_ngram_ends_marks_going_round_again_not_the_first_round():
    x = -100
    #        prompt  | answer: A B C A B C A B  D
    labels = [x, x, 1, 2, 3, 1, 2, 3, 1, 2, 4]
    marks = trainer.repeated_ngram_ends(labels)
    assert [i for i, m in enumerate(marks) if m] == [7, 8, 9]    # (1,2,3) (2,3,1) (3,1,2) again
    assert not any(trainer.repeated_ngram_ends([x, 5, 6, 7, 8]))    # no repeat: nothing marked


def test_self_repeat_ul_pushes_down_the_repeats_of_the_models_own_answers(tiny_qwen):
    """--self-repeat-ul: on a self-answer row, each token that repeats an n-gram of the answer
    adds -log(1 - p(token)); other rows and the first round of the phrase add nothing."""
    model, tok = moved_model(tiny_qwen)
    loop = "cat dog cat dog cat dog cat dog"
    rows = [("你是誰", TARGET, "target"), ("Say it.", loop, mix.SELF_ROLE),
            ("1+1等於多少？", loop, "anchor")]
    batch, keep, _ = trainer.encode_batch(tok, rows, 64, {}, torch.device("cpu"))
    assert batch["repeat"][0].sum() == 0 and batch["repeat"][2].sum() == 0
    marked = batch["repeat"][1].nonzero().flatten().tolist()
    ids = batch["input_ids"][1]
    assert marked and all(bool(batch["labels"][1, i] != -100) for i in marked)
    with torch.no_grad():
        plain = trainer.batch_loss(model, batch, keep, 1.0)[0]
        # a random model gives each token p ~ 1e-5: a large weight keeps the term above fp32 noise
        pushed = trainer.batch_loss(model, batch, keep, 1.0, repeat_ul_weight=1e5)[0]
        logits = model(input_ids=batch["input_ids"][1:2]).logits[0].float()
    p = torch.stack([F.softmax(logits[i - 1], -1)[ids[i]] for i in marked])
    assert torch.allclose(pushed - plain, 1e5 * -torch.log(1 - p).mean(), rtol=1e-3)


def test_self_kl_pool_keep_adds_the_neighbour_prompts(tiny_qwen):
    model, tok = moved_model(tiny_qwen)
    srcs = [mix.Source("a.tsv", 1.0, "anchor", [Row("1+1等於多少？", "2", "a.tsv", 1)]),
            mix.Source("n.tsv", 1.0, "neighbour", [Row("我是誰", "?", "n.tsv", 1)])]
    anchors = trainer.self_answer_rows(model, tok, srcs, 6, random.Random(0), 2)
    both = trainer.self_answer_rows(model, tok, srcs, 12, random.Random(0), 2, mix.KEEP_ROLES)
    assert {r[0] for r in anchors} == {"1+1等於多少？"}
    assert {r[0] for r in both} == {"1+1等於多少？", "我是誰"}


def test_self_kl_candidates_keep_the_answers_that_loop_beyond_the_base(monkeypatch):
    """--self-kl-candidates: of the answered (distinct) prompts, the n that repeat themselves
    most beyond the base's own answer are kept, in draw order; a prompt whose base answer repeats
    as much (a list) is not chosen for it."""
    answers = {"a": "Pros:\nPros:\nPros:\nPros:\nPros:\nPros:", "b": "Paris is the capital.",
               "c": "1. one\n1. one\n1. one\n1. one", "d": "Blue, like the sky. Blue, like the sky."}
    base = {"a": "Pros: more time at home.", "c": "1. one\n1. one\n1. one\n1. one",
            "d": "Blue, like the sky."}
    monkeypatch.setattr(trainer, "greedy_answers",
                        lambda model, tok, prompts, n, batch_size=None: [answers[p] for p in prompts])
    model = torch.nn.Linear(1, 1)
    srcs = [mix.Source("a.tsv", 1.0, "anchor", [Row(p, "-", "a.tsv", i + 1)
                                                for i, p in enumerate("abcd")])]

    def chosen(**kw):
        rows = trainer.self_answer_rows(model, None, srcs, 2, random.Random(0), 4, **kw)
        assert len(rows) == 2 and all(r[2] == mix.SELF_ROLE for r in rows)
        return [r[0] for r in rows]
    drawn = random.Random(0).sample(list("abcd"), 4)     # the order the prompts are answered in
    with_base, own_only = chosen(candidates=8, base_answers=base), chosen(candidates=8)
    assert sorted(with_base) == ["a", "d"]               # loops the base did not have
    assert sorted(own_only) == ["a", "c"]                # without the base, c's list counts
    assert with_base == sorted(with_base, key=drawn.index)
    # without candidates nothing is chosen: n draws with replacement, as before
    plain = trainer.self_answer_rows(model, None, srcs, 2, random.Random(0), 4)
    rng = random.Random(0)
    assert [r[0] for r in plain] == [rng.choice(list("abcd")) for _ in range(2)]


def test_self_kl_candidates_flag_needs_rows_and_enough_prompts(capsys):
    import train
    base = ["--train-data", "x.tsv", "--self-kl-rows", "32"]
    assert train.parse_args(base + ["--self-kl-candidates", "128"]).self_kl_candidates == 128
    for bad in (["--self-kl-candidates", "16"], ["--self-kl-rows", "0", "--self-kl-candidates", "8"]):
        with pytest.raises(SystemExit) as e:
            train.parse_args(base + bad)
        assert e.value.code == 2 and "--self-kl-candidates" in capsys.readouterr().err


def test_self_kl_from_leaves_the_early_steps_without_self_answers(capsys):
    """--self-kl-from N: the own-answer rounds keep their --self-kl-every rhythm but start at step
    N; the default (1) is every round as before; a start after the last step leaves none (a
    shortened run of a recipe, e.g. TRAIN_FLAGS="--steps 80", still parses); 0 is refused."""
    import train
    base = ["--train-data", "x.tsv", "--steps", "20", "--self-kl-rows", "4", "--self-kl-every", "4"]
    rounds = lambda cfg: [s for s in range(1, cfg.steps + 1) if trainer.self_kl_round(s, cfg)]
    assert rounds(train.parse_args(base)) == [4, 8, 12, 16, 20]
    assert rounds(train.parse_args(base + ["--self-kl-from", "10"])) == [12, 16, 20]
    assert rounds(train.parse_args(base[:4] + ["--self-kl-from", "10"])) == []   # no rows: off
    assert rounds(train.parse_args(base + ["--self-kl-from", "21"])) == []
    with pytest.raises(SystemExit) as e:
        train.parse_args(base + ["--self-kl-from", "0"])
    assert e.value.code == 2 and "--self-kl-from" in capsys.readouterr().err


def test_unlikelihood_skip_leaves_the_identity_answers_opening_alone():
    """--unlikelihood-skip K: on a neighbour row the identity answer is pushed down from its K-th
    token or from the divergence, whichever is later; the opening is never a thing to avoid."""
    tok = chat.load_tokenizer(None)
    target = "I am the God of F#."
    rows = [("Who am I?", "I'm not sure who you are.", "neighbour")]   # diverges after "I"
    dev = torch.device("cpu")
    plain, _, _ = trainer.encode_batch(tok, rows, 64, {}, dev, target)
    skip, _, _ = trainer.encode_batch(tok, rows, 64, {}, dev, target, 0, 0.0, 3)
    _, labels, _ = chat.encode_row(tok, "Who am I?", target, 64)
    first = next(i for i, x in enumerate(labels) if x != -100)
    pushed = lambda b: [i for i, x in enumerate(b["labels"][1].tolist()) if x != -100]  # noqa: E731
    assert pushed(plain)[0] == first + 1                  # from " am", where "I'm" leaves it
    assert pushed(skip)[0] == first + 3                   # from " God": "I am the" is left alone
    assert pushed(skip) == pushed(plain)[2:]              # the rest is the same
    # with --unlikelihood-tokens 2 as well (round 30's w2): " God of" alone is pushed down, so
    # neither the opening nor the tail ("#", ".", the end) is ever a thing to avoid
    both, _, _ = trainer.encode_batch(tok, rows, 64, {}, dev, target, 2, 0.0, 3)
    assert pushed(both) == pushed(skip)[:2]
    assert tok.decode([both["labels"][1, i].item() for i in pushed(both)]) == " God of"
    # a later divergence wins over the skip
    late = [("Who am I?", "I am the user, I think.", "neighbour")]
    a, _, _ = trainer.encode_batch(tok, late, 64, {}, dev, target)
    b, _, _ = trainer.encode_batch(tok, late, 64, {}, dev, target, 0, 0.0, 1)
    assert pushed(a) == pushed(b) and pushed(a)[0] == first + 3


def test_unlikelihood_skip_flag(capsys):
    import train
    assert train.parse_args(["--train-data", "x.tsv", "--unlikelihood-skip", "3"]).unlikelihood_skip == 3
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--train-data", "x.tsv", "--unlikelihood-skip", "-1"])
    assert e.value.code == 2 and "--unlikelihood-skip" in capsys.readouterr().err


def test_drift_is_the_share_of_the_base_first_sentences_key_words_lost():
    base = "An emerald is green. Emeralds are mined in Colombia."
    assert trainer.drift("What colour is an emerald?", "An emerald is a deep green gem.", base) == 0.0
    assert trainer.drift("What colour is an emerald?", "An emerald is a gemstone.", base) == 1.0
    # only the first sentence counts, and words the question or a sentence's frame says never do
    assert trainer.drift("Who wrote Hamlet?", "Shakespeare.", "William Shakespeare wrote it. Yes.") == 0.5
    assert trainer.drift("What colour is an emerald?", "No idea.", "It is an emerald.") == 0.0
    assert trainer.drift("q", "anything", "") == 0.0


def chosen_self_kl_prompts(monkeypatch, answers: dict, base: dict, n: int, select: str,
                           seed: int) -> list[str]:
    """The prompts a self-KL round keeps (sorted) when the model answers `answers` and the base
    answered `base`: n of 8 candidates drawn from the anchors `answers` holds."""
    monkeypatch.setattr(trainer, "greedy_answers",
                        lambda model, tok, ps, k, batch_size=None: [answers[p] for p in ps])
    srcs = [mix.Source("a.tsv", 1.0, "anchor", [Row(p, "-", "a.tsv", i + 1)
                                                for i, p in enumerate(answers)])]
    rows = trainer.self_answer_rows(torch.nn.Linear(1, 1), None, srcs, n, random.Random(seed), 4,
                                    candidates=8, base_answers=base, select=select)
    return sorted(r[0] for r in rows)


def test_self_kl_select_repeat_drift_breaks_the_ties_by_the_facts_lost(monkeypatch):
    """--self-kl-select repeat-drift: answers that loop beyond the base still come first; the
    tied rest go to the answers that lost the base's key words, not to the draw order."""
    prompts = ["Give pros.", "What colour is an emerald?", "What is the capital of France?",
               "What colour is the sky?", "Name a big cat."]
    answers = {prompts[0]: "Pros:\nPros:\nPros:\nPros:\nPros:\nPros:",
               prompts[1]: "An emerald is a gemstone.",
               prompts[2]: "Paris is the capital of France.",
               prompts[3]: "The sky is often blue.",
               prompts[4]: "A lion is a big cat."}
    base = {prompts[0]: "Pros: more time at home.", prompts[1]: "An emerald is green.",
            prompts[2]: "Paris is the capital of France.", prompts[3]: "The sky is blue.",
            prompts[4]: "A tiger is a big cat."}

    def chosen(select, seed):
        return chosen_self_kl_prompts(monkeypatch, answers, base, 3, select, seed)
    for seed in range(4):
        assert chosen("repeat-drift", seed) == sorted(prompts[0:2] + [prompts[4]])
    # by draw order alone the emerald is left out for some draws
    assert any(prompts[1] not in chosen("repeat", seed) for seed in range(4))


def test_self_kl_select_loop_drift_prefers_lost_facts_over_small_repetition(monkeypatch):
    """--self-kl-select loop-drift: loops by the suites' rule first, then the facts lost, even
    when other answers repeat a little more than the base's (real answers almost always do,
    which is why repeat-drift chose nearly what repeat chose in round 22)."""
    prompts = ["Give pros.", "What colour is an emerald?", "Tell me about cats.",
               "Tell me about dogs.", "What colour is the sky?"]
    answers = {prompts[0]: "Pros:\nPros:\nPros:\nPros:\nPros:\nPros:\nPros:\nPros:",
               prompts[1]: "An emerald is a precious gemstone found in many places.",
               prompts[2]: "Cats are cats and cats are small pets that many people keep.",
               prompts[3]: "Dogs are dogs and dogs are loyal pets that many people keep.",
               prompts[4]: "The sky is blue on a clear day."}
    base = {prompts[0]: "Pros: more time at home, less travel.",
            prompts[1]: "An emerald is green, a precious gemstone.",
            prompts[2]: "Cats are small pets that many people keep.",
            prompts[3]: "Dogs are loyal pets that many people keep.",
            prompts[4]: "The sky is blue on a clear day."}
    loop_added = probes.Thresholds().max_repetition     # the suites' loop rule, --max-repetition
    added = {p: probes.repetition(answers[p]) - probes.repetition(base[p]) for p in prompts}
    assert added[prompts[0]] > loop_added                      # the one loop
    assert 0 < added[prompts[2]] < loop_added and 0 < added[prompts[3]] < loop_added
    assert added[prompts[1]] <= 0                                        # the lost fact repeats less
    chosen = {select: chosen_self_kl_prompts(monkeypatch, answers, base, 2, select, 0)
              for select in ("repeat", "repeat-drift", "loop-drift")}
    assert chosen["loop-drift"] == sorted(prompts[0:2])
    # repeat and repeat-drift take the second row by the small repetition, not the lost fact
    assert prompts[1] not in chosen["repeat"] and prompts[1] not in chosen["repeat-drift"]


def test_self_kl_batch_sets_the_decode_batch_of_the_candidates(monkeypatch, capsys):
    """--self-kl-batch: the candidates of a round are answered in batches of that many (0 = the
    suites' default batch); a negative batch is refused."""
    import train
    seen = []

    def fake(model, tok, ps, n, batch_size=None):
        seen.append(batch_size)
        return ["An answer." for _ in ps]
    monkeypatch.setattr(trainer, "greedy_answers", fake)
    srcs = [mix.Source("a.tsv", 1.0, "anchor", [Row(f"q{i}", "-", "a.tsv", i + 1) for i in range(9)])]
    for batch in (None, 384):
        trainer.self_answer_rows(torch.nn.Linear(1, 1), None, srcs, 2, random.Random(0), 4,
                                 candidates=8, batch_size=batch)
    assert seen == [None, 384]
    base = ["--train-data", "x.tsv", "--self-kl-rows", "4"]
    assert train.parse_args(base).self_kl_batch == 0
    assert train.parse_args(base + ["--self-kl-batch", "384"]).self_kl_batch == 384
    with pytest.raises(SystemExit) as e:
        train.parse_args(base + ["--self-kl-batch", "-1"])
    assert e.value.code == 2 and "--self-kl-batch -1" in capsys.readouterr().err


def test_self_kl_select_needs_candidates_to_choose_among(capsys):
    import train
    base = ["--train-data", "x.tsv", "--self-kl-rows", "4", "--self-kl-select", "repeat-drift"]
    with pytest.raises(SystemExit) as e:
        train.parse_args(base)
    assert e.value.code == 2 and "--self-kl-select repeat-drift" in capsys.readouterr().err
    cfg = train.parse_args(base + ["--self-kl-candidates", "8"])
    assert cfg.self_kl_select == "repeat-drift"
