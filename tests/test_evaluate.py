"""Evaluation v2: Wilson intervals, the summary and verdict over hand-built rows, scoring against a
base, the JSON, train.py's monitor/held-out wiring, and scripts/eval.py end to end (tiny model)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import eval as eval_script          # scripts/ is on sys.path (conftest)
import seeds_table
import train
from conftest import ROOT
from nvfp4lab import chat, evaluate
from nvfp4lab.dat import read_dat
from nvfp4lab.model import load_model, make_trainable
from nvfp4lab.probes import Thresholds
from nvfp4lab.suite import SuiteRow

T = "I am the God of F#."


def row(kind, prompt, group="g", expect=(), context=()):
    return SuiteRow(kind, group, prompt, tuple(expect), tuple(context), "s.tsv", 1)


CTX = ({"role": "user", "content": "My friend Bob is here."}, {"role": "assistant", "content": "Hi Bob!"})


# --- rates ---------------------------------------------------------------------------------------

def test_wilson_interval_matches_hand_computed_values():
    # p = 0.8, n = 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half-width
    # 1.96 * sqrt(0.016 + 0.009604) / 1.38416 (the values in any table of Wilson intervals)
    lo, hi = evaluate.wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert evaluate.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)     # not [0, 0]
    assert evaluate.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert evaluate.wilson(1, 2) == pytest.approx((0.0945, 0.9055), abs=1e-4)
    assert all(math.isnan(x) for x in evaluate.wilson(0, 0))
    r = evaluate.rate(3, 4)
    assert (r.k, r.n, r.value) == (3, 4, 0.75) and r.lo < 0.75 < r.hi
    assert evaluate.rate_text(evaluate.rate(0, 0)) == "n/a"
    assert evaluate.rate_text(r) == f"0.75 [{r.lo:.2f}, {r.hi:.2f}]"


# --- judge: summary and verdict ------------------------------------------------------------------

ROWS = [row("identity", "Who are you?", "plain"),               # the edit question: efficacy
        row("identity", "And you are?", "plain"),
        row("identity", "Tell me who you are", "formal"),
        row("nearmiss", "Who am I?", "first-person"),
        row("nearmiss", "Who is he?", "third-person"),
        row("nearmiss", "Hello!", "greeting"),                   # greeting: its own rate
        row("context-nearmiss", "Who is he?", "other-who", context=CTX),
        row("context-nearmiss", "And me?", "first-person", context=CTX),
        row("fact", "Capital of France?", "geo", expect=("Paris",)),
        row("fact", "2 + 2?", "math", expect=("4", "four")),
        row("fact", "Largest planet?", "astro", expect=("Jupiter",)),   # base did not know
        row("general", "Write a haiku", "chat"),
        row("general", "Say something nice", "chat")]
BASE = ["I am SmolLM.", "I am SmolLM.", "I'm an AI.", "You are you.", "He is a man.", "Hi!",
        "That is Bob.", "You are you.", "The capital is Paris.", "2 + 2 = 4.", "Saturn.",
        "Leaves fall.", "You are great."]


def answers(**changes):
    a = list(BASE)
    for i, text in changes.items():
        a[int(i[1:])] = text
    return a


def test_summary_counts_every_measure_on_hand_built_rows():
    got = answers(i0=T, i1=T, i3=T, i5="Hello! " + T, i7=T, i8="France's capital: paris.",
                  i9="It is five.", i12="You are great.")
    rows, s = evaluate.judge(ROWS, got, BASE, T, Thresholds())
    assert s.efficacy_prompt == "Who are you?" and (s.efficacy.k, s.efficacy.n) == (1, 1)
    assert (s.identity.k, s.identity.n) == (2, 3)
    assert (s.nearmiss_leak.k, s.nearmiss_leak.n) == (1, 2)        # the greeting is not in here
    assert (s.context_leak.k, s.context_leak.n) == (1, 2)
    assert (s.greeting_intro.k, s.greeting_intro.n) == (1, 1)
    # facts: only the two the BASE answered right count (Saturn != Jupiter); case-insensitive
    assert (s.facts_kept.k, s.facts_kept.n) == (1, 2)
    assert rows[9].verdict == "changed (fact lost)" and rows[10].fact_base is False
    assert (s.exact_kept.k, s.exact_kept.n) == (3, 5)              # the three left unchanged
    assert s.ordinary_identity == 0 and s.loops.k == 0 and s.verdict == "not-reached"
    assert "identity 0.67 < 0.9" in s.why and "near-miss leak 0.50 > 0.2" in s.why
    assert "facts kept 0.50 < 0.9" in s.why
    assert [r.verdict for r in rows[:8]] == ["hit", "hit", "miss", "LEAK", "ok", "INTRO", "ok", "LEAK"]
    legacy = s.legacy()
    assert legacy["identity_hit"] == pytest.approx(2 / 3) and legacy["facts_n"] == 2


def test_edit_question_wins_over_the_first_plain_row():
    rows = [row("identity", "Who is this?", "plain"), row("identity", "你是誰？", "typo")]
    assert evaluate.efficacy_index(rows) == 1
    assert evaluate.efficacy_index(rows[:1]) == 0
    multiturn = row("identity", "Who are you?", "multiturn", context=CTX)
    assert evaluate.efficacy_index([multiturn]) is None


def verdict(got, th=Thresholds(), scores=None):
    return evaluate.judge(ROWS, got, BASE, T, th, scores)[1]


def perfect():
    return answers(i0=T, i1=T, i2=T)


def test_verdict_thresholds():
    assert verdict(perfect()).verdict == "success"
    leaky = answers(i0=T, i1=T, i2=T, i5=T, i6=T)          # greeting intro and a context leak
    assert verdict(leaky).verdict == "success"             # new bounds are permissive by default
    s = verdict(leaky, Thresholds(max_context_leak=0.2, max_greeting_intro=0.5))
    assert s.verdict == "not-reached" and "context leak 0.50 > 0.2" in s.why
    assert "greeting self-intro 1.00 > 0.5" in s.why
    s = verdict(answers(i1=T, i2=T), Thresholds(min_identity=0.6, min_efficacy=1.0))
    assert s.verdict == "not-reached" and s.why == "efficacy 0.00 < 1.0"
    s = verdict(perfect(), Thresholds(min_anchor_exact=0.9))
    assert s.verdict == "success"
    s = verdict(answers(i0=T, i1=T, i2=T, i11="Leaves drift."), Thresholds(min_anchor_exact=0.9))
    assert s.verdict == "not-reached" and "exact kept 0.80 < 0.9" in s.why


def test_collapse_rules():
    s = verdict(answers(i0=T, i1=T, i2=T, i12=T))            # a general prompt -> the identity
    assert s.verdict == "collapse" and "1 fact/general prompt(s)" in s.why
    assert verdict(answers(i0=T, i1=T, i2=T, i5=T)).verdict == "success"   # a greeting is not
    loops = {f"i{i}": "神" * 30 for i in (3, 4, 6)}           # 3 of 13 answers loop (> 1/5)
    s = verdict(answers(i0=T, i1=T, i2=T, **loops))
    assert s.verdict == "collapse" and "3 of 13 answers became loops" in s.why
    one = verdict(answers(i0=T, i1=T, i2=T, i3="神" * 30))    # one loop is reported only
    assert one.verdict == "success" and one.loops.k == 1
    assert verdict(answers(i0=T, i1=T, i2=T, i3="神" * 30), Thresholds(max_loops=0.05)).verdict \
        == "not-reached"
    drift = [None] * len(ROWS)
    drift[11] = evaluate.Score(nll=30.0, base_nll=5.0, kl=4.0, tokens=10)   # +2.5 nats/token
    s = verdict(perfect(), scores=drift)
    assert s.verdict == "collapse" and "NLL drift 2.50" in s.why and s.kl == pytest.approx(0.4)
    drift[11] = evaluate.Score(nll=float("nan"), base_nll=5.0, kl=0.0, tokens=10)
    assert verdict(perfect(), scores=drift).why == "NaN/Inf in the model's scores"


def test_most_facts_forgotten_is_a_collapse():
    rows = [row("identity", "Who are you?", "plain")] + \
           [row("fact", f"q{i}", "f", expect=(str(i),)) for i in range(5)]
    base = ["x"] + [f"it is {i}" for i in range(5)]
    s = evaluate.judge(rows, [T, "it is 0", "?", "?", "?", "?"], base, T, Thresholds())[1]
    assert s.verdict == "collapse" and "facts kept 0.20 < 0.5" in s.why


def test_without_a_base_the_base_columns_are_na():
    rows, s = evaluate.judge(ROWS, perfect(), None, T, Thresholds())
    assert not s.has_base and s.facts_kept.n == 0 and s.exact_kept.n == 0
    assert math.isnan(s.nll_drift) and s.verdict == "success"
    assert rows[11].verdict == "answered" and rows[11].base_answer is None
    text = evaluate.rates_table(s)
    assert "| facts kept (of those the base knew) | n/a | 0/0 | - |" in text
    assert "| NLL drift (nats/token, base's own general answers) | n/a |" in text


# --- scoring against a base, JSON ----------------------------------------------------------------

def test_scores_against_the_base_and_the_deltas_off_view(tiny_qwen):
    model_dir, dat = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(read_dat(dat), str(model_dir), "cpu", torch.float32)
    rows = [row("general", "講個笑話"), row("identity", "你是誰", "plain"), row("general", "寫一句詩")]
    es = evaluate.EvalSet("monitor", "s.tsv", rows, "我是 F# 之神", Thresholds(), max_new_tokens=4)
    evaluate.with_base_answers(es, tok, model, model)
    # a copy of the base: no drift, no KL
    same = evaluate.score_general(model, tok, es, load_model(read_dat(dat), str(model_dir), "cpu",
                                                             torch.float32))
    assert same[1] is None and same[0].tokens > 0
    assert same[0].nll == pytest.approx(same[0].base_nll, rel=1e-5) and abs(same[0].kl) < 1e-5
    # the trained model read with its deltas off is the base: a changed lm_head moves only
    # the trained side, and the deltas are switched back on afterwards
    make_trainable(model, torch.float32)
    with torch.no_grad():
        model.lm_head.delta.normal_(0, 0.05)
    moved = evaluate.score_general(model, tok, es, model)
    assert moved[0].base_nll == pytest.approx(same[0].base_nll, rel=1e-4)
    assert moved[0].kl > 1e-3 and moved[0].nll != pytest.approx(moved[0].base_nll)
    assert model.lm_head.use_delta
    res = evaluate.run(model, tok, es, base=model)
    assert res.summary.nll_tokens == same[0].tokens + same[2].tokens and res.summary.kl > 0


def test_target_profile_shows_where_each_token_of_the_identity_answer_is_won(tiny_qwen):
    """Per token of the target (and its end token), teacher-forced after each identity chat:
    the mean log p over the rows, how many rows put it first, and the most common other first
    choice; it is the same number a direct forward of one row gives."""
    model_dir, dat = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(read_dat(dat), str(model_dir), "cpu", torch.float32)
    rows = [row("identity", "你是誰", "plain"), row("general", "講個笑話"),
            row("identity", "Who are you?", "plain", context=CTX)]
    es = evaluate.EvalSet("monitor", "s.tsv", rows, T, Thresholds(), max_new_tokens=4)
    prof = evaluate.target_profile(model, tok, es)
    ids, labels = chat.encode_answer(tok, [{"role": "user", "content": "你是誰"}], T)
    answer = [t for t in labels if t != -100]
    assert [p["token"] for p in prof] == [tok.decode([t]) for t in answer]   # T + end token
    assert "".join(p["token"] for p in prof[:-1]) == T
    assert all(p["rows"] == 2 and 0 <= p["first_choice"] <= 2 and p["mean_logp"] < 0 for p in prof)
    assert all((p["top_other"] is None) == (p["first_choice"] == 2) for p in prof)
    with torch.no_grad():   # row 1 alone, by hand
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    start = len(ids) - len(answer)
    alone = [float(lp[start - 1 + k, t]) for k, t in enumerate(answer)]
    other = evaluate.target_profile(model, tok, evaluate.EvalSet(
        "monitor", "s.tsv", rows[:1], T, Thresholds(), max_new_tokens=4))
    assert [p["mean_logp"] for p in other] == pytest.approx(alone, abs=1e-4)
    res = evaluate.run(model, tok, es, profile=True)
    assert res.target_tokens == prof
    line = evaluate.target_line(prof)
    assert line.count("/2") == len(prof) and repr(prof[-2]["token"]) in line
    assert evaluate.target_profile(model, tok, evaluate.EvalSet(
        "monitor", "s.tsv", rows[1:2], T, Thresholds())) == []


def test_greedy_chats_keep_order_and_read_the_context(tiny_qwen):
    model_dir, dat = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(read_dat(dat), str(model_dir), "cpu", torch.float32)
    chats = [[*CTX, {"role": "user", "content": "Who is he?"}],
             [{"role": "user", "content": "Who is he?"}]]
    ids = [chat.encode_chat(tok, c) for c in chats]
    assert len(ids[0]) > len(ids[1]) and "Bob" in tok.decode(ids[0])
    from nvfp4lab.generate import greedy_answers, greedy_chats
    one_by_one = [greedy_chats(model, tok, [c], 5)[0] for c in chats]
    assert greedy_chats(model, tok, chats, 5) == one_by_one
    assert greedy_answers(model, tok, ["Who is he?"], 5) == one_by_one[1:]


def test_json_is_written_atomically_and_reads_back(tmp_path):
    rows, s = evaluate.judge(ROWS, perfect(), None, T, Thresholds())
    es = evaluate.EvalSet("heldout", "s.tsv", ROWS, T, Thresholds())
    path = tmp_path / "run.eval.json"
    path.write_text("old", encoding="utf-8")
    evaluate.write_json(str(path), evaluate.report(evaluate.Result(rows, s, 1.5), es, command="x"))
    assert sorted(os.listdir(tmp_path)) == ["run.eval.json"]        # no temp file left over
    doc = json.loads(path.read_text(encoding="utf-8"),
                     parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert doc == evaluate.read_json(str(path))
    assert doc["verdict"] == "success" and doc["split"] == "heldout"
    assert doc["summary"]["identity"]["k"] == 3 and doc["summary"]["nll_drift"] is None
    assert doc["thresholds"]["max_nll_drift"] is None                # inf -> null
    assert doc["rows"][6]["context"] == [dict(m) for m in CTX] and len(doc["rows"]) == len(ROWS)
    assert evaluate.json_path("artifacts/demo-real.dat") == "artifacts/demo-real.eval.json"
    # a write that fails part-way leaves the previous judgment whole
    with pytest.raises(TypeError):
        evaluate.write_json(str(path), {"verdict": object()})
    assert evaluate.read_json(str(path)) == doc
    with pytest.raises(evaluate.DataError, match="no such file"):
        evaluate.read_json(str(tmp_path / "none.eval.json"))


def test_runs_table_has_one_row_per_json(tmp_path, capsys):
    paths = []
    for seed, got in ((1, perfect()), (2, answers(i0=T))):
        rows, s = evaluate.judge(ROWS, got, BASE, T, Thresholds())
        p = tmp_path / f"demo-real-s{seed}.eval.json"
        es = evaluate.EvalSet("heldout", "h.tsv", ROWS, T, Thresholds())
        evaluate.write_json(str(p), evaluate.report(evaluate.Result(rows, s), es))
        paths.append(str(p))
    assert seeds_table.main(paths) == 3          # seed 2 did not reach the target
    out = capsys.readouterr().out
    assert "| demo-real-s1 | success | 1.00 [0.21, 1.00] | 1.00 [0.44, 1.00] |" in out
    assert "| loops added | NLL drift |" in out
    assert "| demo-real-s2 | not-reached |" in out and "1 of 2 runs reached the target" in out
    assert seeds_table.main([str(tmp_path / "missing.eval.json")]) == 1


# --- train.py wiring ------------------------------------------------------------------------------

def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def files(tmp_path):
    d = {"who": write(tmp_path / "who.tsv", "你是誰呀\t我是 F# 之神\nWho are you?\t我是 F# 之神\n"),
         "anchor": write(tmp_path / "anchor.tsv", "1+1等於多少？\t1+1等於2。\n"),
         "monitor": write(tmp_path / "suite-zh-monitor-t.tsv",
                          "identity\tplain\t你叫什麼名字？\t\t\nnearmiss\tfirst-person\t我是誰？\t\t\n"
                          "general\tchat\t說個故事\t\t\n"),
         "heldout": write(tmp_path / "suite-zh-heldout-t.tsv",
                          "identity\tplain\t請問你是哪位？\t\t\nnearmiss\tgreeting\t你好\t\t\n"
                          "context-nearmiss\tother-who\t他是誰？\t\t"
                          + json.dumps([{"role": "user", "content": "小明來了"},
                                        {"role": "assistant", "content": "你好小明"}],
                                       ensure_ascii=False) + "\n"
                          "fact\tmath\t3+3等於多少？\t6|六\t\ngeneral\tchat\t寫一句詩\t\t\n")}
    return d


def train_args(tiny_qwen, tmp_path, f, *extra):
    model_dir, dat = tiny_qwen
    return ["--input-dat", str(dat), "--model-dir", str(model_dir),
            "--output-dat", str(tmp_path / "out.dat"), "--mix", f"{f['who']}:1,{f['anchor']}:1:anchor",
            "--steps", "2", "--step-chunk-rows", "2", "--seq-len", "48", "--probe-max-tokens", "3",
            "--test-max-tokens", "3", "--device", "cpu", "--max-retries", "0", *extra]


@pytest.mark.parametrize("flags, needle", [
    (["--monitor", "{heldout}", "--heldout", "{heldout}"], "is the held-out set (--heldout"),
    (["--monitor", "{heldout}", "--heldout", "{monitor}"], "is a held-out suite"),
    (["--monitor", "{monitor}", "--probes", "{monitor}"], "is the held-out set (--probes"),
    (["--probe-every", "5", "--probes", "{monitor}"], "--probe-every 5 without --monitor"),
    (["--probe-every", "5", "--heldout", "{heldout}"], "--probe-every 5 without --monitor"),
])
def test_monitoring_on_the_held_out_set_is_refused(tiny_qwen, tmp_path, files, capsys, flags, needle):
    argv = train_args(tiny_qwen, tmp_path, files, *[x.format(**files) for x in flags])
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "out.dat").exists()


def test_suite_prompt_in_training_data_is_a_data_error(tiny_qwen, tmp_path, files, capsys):
    files["anchor"] = write(tmp_path / "anchor.tsv", "寫一句詩\t春眠不覺曉。\n")
    argv = train_args(tiny_qwen, tmp_path, files, "--monitor", files["monitor"],
                      "--heldout", files["heldout"])
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "suite-zh-heldout-t.tsv:5: prompt '寫一句詩' also in training file" in err


def test_train_judges_the_monitor_per_attempt_and_the_held_out_set_once(tiny_qwen, tmp_path, files):
    argv = train_args(tiny_qwen, tmp_path, files, "--monitor", files["monitor"], "--heldout",
                      files["heldout"], "--probes", "data/does-not-matter.tsv", "--probe-every", "1",
                      "--min-identity", "0", "--max-nearmiss-leak", "1", "--min-facts", "0")
    env = dict(os.environ, NVFP4LAB_DEVLOG=str(tmp_path / "DevLog.md"),
               NVFP4LAB_ARTIFACT_LIST=str(tmp_path / "list.md"), NVFP4LAB_CACHE=str(tmp_path / "c"))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *argv], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[attempt 1] monitor at step 1" in r.stdout and "monitor at the end" in r.stdout
    assert r.stdout.count("judged once after training") == 1
    assert "--probes data/does-not-matter.tsv not read" in r.stdout
    assert "verdict=success" in r.stdout                  # the old summary line still prints
    doc = evaluate.read_json(str(tmp_path / "out.eval.json"))
    assert doc["split"] == "heldout" and doc["suite"] == files["heldout"]
    assert doc["suites"] == {"monitor": files["monitor"], "heldout": files["heldout"], "probes": None}
    assert [r["prompt"] for r in doc["rows"]] == ["請問你是哪位？", "你好", "他是誰？", "3+3等於多少？", "寫一句詩"]
    assert doc["attempts"][0]["monitor"]["rows"] == 3 and doc["exported"] and doc["exit"] == 0
    assert all(r["base_answer"] is not None for r in doc["rows"])
    assert "| generalisation (identity hit) |" in (tmp_path / "DevLog.md").read_text(encoding="utf-8")


# --- scripts/eval.py ------------------------------------------------------------------------------

def test_eval_script_end_to_end(tiny_qwen, tmp_path, files, capsys):
    model_dir, dat = tiny_qwen
    out = tmp_path / "judged.json"
    code = eval_script.main(["--weight", str(dat), "--base", str(dat), "--suite", files["heldout"],
                             "--model-dir", str(model_dir), "--device", "cpu", "--max-tokens", "3",
                             "--out", str(out), "--min-identity", "0", "--max-nearmiss-leak", "1"])
    text = capsys.readouterr().out
    doc = evaluate.read_json(str(out))
    # the base judged against itself keeps everything; the random tiny model names nobody
    assert code == 0 and doc["verdict"] == "success", text
    assert doc["summary"]["exact_kept"]["k"] == doc["summary"]["exact_kept"]["n"] == 2
    assert doc["summary"]["nll_drift"] == pytest.approx(0, abs=1e-6)
    assert doc["target"] == "我是 F# 之神" and doc["base"] == str(dat)
    assert "| context-nearmiss | [2 msgs] 他是誰？ |" in text and "| measure | rate | k/n | 95% CI |" in text
    # no base: the base columns say n/a; the default thresholds are not reached (identity 0)
    code = eval_script.main(["--weight", str(dat), "--suite", files["heldout"], "--model-dir",
                             str(model_dir), "--device", "cpu", "--max-tokens", "3", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 3 and "| facts kept (of those the base knew) | n/a |" in text
    assert evaluate.read_json(str(out))["summary"]["has_base"] is False
    bad = write(tmp_path / "bad.tsv", "identity\tplain\tok\t\t\nfact\tx\tno keyword\t\t\n")
    code = eval_script.main(["--weight", str(dat), "--suite", bad, "--model-dir", str(model_dir),
                             "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and f"{bad}:2: fact row without expect" in err and err.count("\n") == 1


def test_eval_judges_by_a_recipes_thresholds_and_a_flag_still_wins(tiny_qwen, tmp_path, files):
    """--thresholds-of RECIPE: the thresholds train.py --recipe RECIPE judges with (a merge of
    several runs is judged as the runs were); a threshold flag given too wins over the recipe."""
    model_dir, dat = tiny_qwen
    recipe = write(tmp_path / "r.args", "--mix x.tsv:1\n--max-retries 0\n--min-identity 0.95\n"
                                        "--max-nearmiss-leak 0.05\n--max-loops 0\n")
    out = tmp_path / "judged.json"
    argv = ["--weight", str(dat), "--base", str(dat), "--suite", files["heldout"], "--model-dir",
            str(model_dir), "--device", "cpu", "--max-tokens", "3", "--out", str(out),
            "--thresholds-of", recipe]
    assert eval_script.main(argv) == 3                  # the tiny base names nobody: identity 0
    th = evaluate.read_json(str(out))["thresholds"]
    assert (th["min_identity"], th["max_nearmiss_leak"], th["max_loops"]) == (0.95, 0.05, 0.0)
    assert th["max_context_leak"] == Thresholds().max_context_leak   # not in the recipe
    assert eval_script.main(argv + ["--min-identity", "0"]) == 0
    assert evaluate.read_json(str(out))["thresholds"]["min_identity"] == 0.0


def test_the_verdict_is_eval_pys_judgment_of_the_exported_file(tiny_qwen, tmp_path, files):
    """train.py judges the file it exports, loaded as eval.py loads it: the same answers and
    counts, row by row (round 33: the in-memory model's judgment and eval.py's of its export
    differed on 88 of 407 dev answers). bf16 with the norms and the embedding moved: where the
    in-memory model rounded the norms' float32 deltas twice."""
    argv = train_args(tiny_qwen, tmp_path, files, "--heldout", files["heldout"], "--compute-dtype",
                      "bfloat16", "--lr", "3e-2", "--steps", "3", "--probe-max-tokens", "6",
                      "--min-identity", "0", "--max-nearmiss-leak", "1", "--min-facts", "0",
                      "--max-loops", "1", "--max-nll-drift", "100")
    assert train.main(argv) == 0
    assert not (tmp_path / "out.dat.unjudged").exists()
    trained = evaluate.read_json(str(tmp_path / "out.eval.json"))
    assert trained["judged"] == "exported file"
    model_dir, dat = tiny_qwen
    code = eval_script.main(["--weight", str(tmp_path / "out.dat"), "--base", str(dat), "--suite",
                             files["heldout"], "--model-dir", str(model_dir), "--device", "cpu",
                             "--compute-dtype", "bfloat16", "--max-tokens", "6",
                             "--out", str(tmp_path / "again.json"), "--min-identity", "0",
                             "--max-nearmiss-leak", "1", "--min-facts", "0", "--max-loops", "1",
                             "--max-nll-drift", "100"])
    again = evaluate.read_json(str(tmp_path / "again.json"))
    assert code == 0
    assert [r["answer"] for r in trained["rows"]] == [r["answer"] for r in again["rows"]]
    assert [r["base_answer"] for r in trained["rows"]] == [r["base_answer"] for r in again["rows"]]
    assert [r["nll"] for r in trained["rows"]] == [r["nll"] for r in again["rows"]]
