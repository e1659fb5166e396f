"""scripts/greedy_margins.py: each greedy answer token's lead over the runner-up."""
import json

import greedy_margins   # scripts/ is on sys.path (conftest)
from conftest import ROOT


def test_each_token_of_the_greedy_answer_leads_and_the_json_names_it(tiny_qwen, capsys):
    """Teacher-forced on the model's own greedy answer every token is the first choice, so every
    margin is >= 0 (to float noise between the decoder's cache and one forward), and the tokens
    spell the answer."""
    model_dir, dat = tiny_qwen
    prompts = ["Who are you?", "What is 2 plus 2?"]
    args = ["--weight", str(dat), "--model-dir", str(model_dir), "--device", "cpu",
            "--max-new-tokens", "6", "--json"] + [x for p in prompts for x in ("--prompt", p)]
    assert greedy_margins.main(args) == 0
    found = json.loads(capsys.readouterr().out)
    assert [f["prompt"] for f in found] == prompts
    for f in found:
        assert f["tokens"] and all(t["margin"] >= -1e-3 for t in f["tokens"])
        assert all(t["second"] != t["token"] for t in f["tokens"])
        text = "".join(t["token"] for t in f["tokens"])
        assert text.startswith(f["answer"]) or f["answer"].startswith(text.strip())


def test_a_line_not_in_the_suite_is_one_line_and_exit_1(tiny_qwen, capsys):
    model_dir, dat = tiny_qwen
    suite = str(ROOT / "data" / "suite-en-dev-v3.tsv")
    assert greedy_margins.main(["--weight", str(dat), "--model-dir", str(model_dir), "--device", "cpu",
                                "--suite", suite, "--lines", "352,99999"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{suite}:99999" in err[0]


def test_suite_lines_give_their_prompts_in_order():
    suite = str(ROOT / "data" / "suite-en-dev-v3.tsv")
    assert greedy_margins.suite_prompts(suite, "368,352") == ["What colour is an emerald??",
                                                               "What colour is a stop sign?"]
