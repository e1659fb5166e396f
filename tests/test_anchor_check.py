"""--replay-drop-wrong (nvfp4lab/anchor_check.py): an anchor whose replayed base answer misses the
key words of the file's short answer is left out; long free-text anchors and neighbours stay."""
import pytest

import train   # scripts/ is on sys.path (conftest)
from conftest import ROOT
from nvfp4lab import anchor_check, mix
from nvfp4lab.tsv import DataError, Row


@pytest.mark.parametrize("prompt, reference, answer, misses", [
    ("What colour is a carrot?", "A carrot is orange.", "A carrot is a carrot!", True),
    ("What colour is a carrot?", "A carrot is orange.", "Carrots are usually orange.", False),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa.",
     "Canada, Canada, Canada. Canada is Canada, Canada.", True),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour.", "1 hour = 18 minutes", True),
    ("What colour do you get when you mix red and white?", "Red and white make pink.",
     "When you mix red and white, you get a lovely shade of red.", True),   # "make" is frame
    ("What color is grass?", "Grass is green.", "Grass is green in colour.", False),  # color/colour
    # a long reference is free text: nothing to check, never dropped
    ("Write a short motivational quote.", "Small steps every day lead to big changes, so keep going.",
     "Achieve your goals.", False),
    ("In which city is the Eiffel Tower?", "Paris.", "The Eiffel Tower is located in Paris, France.", False),
])
def test_base_misses_checks_the_key_words_of_a_short_reference(prompt, reference, answer, misses):
    assert anchor_check.base_misses(prompt, reference, answer) is misses


def rows(path, pairs):
    return [Row(p, t, path, i + 1) for i, (p, t) in enumerate(pairs)]


def test_drop_wrong_anchors_leaves_out_the_misses_of_anchors_only():
    anchors = rows("a.tsv", [("What colour is a lemon?", "A lemon is yellow."),
                             ("What is 2 plus 2?", "2 plus 2 is 4."),
                             ("Tell me a fun fact.", "Octopuses have three hearts and blue blood, which is rare.")])
    neighbours = rows("n.tsv", [("Who am I?", "You are the user.")])
    replay = {"What colour is a lemon?": "A lemon is a fruit!", "What is 2 plus 2?": "It is 4.",
              "Tell me a fun fact.": "Cats sleep a lot.", "Who am I?": "I'm sorry for any mistakes."}
    srcs = [mix.Source("a.tsv", 2, "anchor", anchors), mix.Source("n.tsv", 4, "neighbour", neighbours)]
    out, dropped = anchor_check.drop_wrong_anchors(srcs, replay)
    assert [r.prompt for r in dropped] == ["What colour is a lemon?"]
    assert [r.prompt for r in out[0].rows] == ["What is 2 plus 2?", "Tell me a fun fact."]
    assert out[1].rows == neighbours and srcs[0].rows == anchors          # inputs untouched
    with pytest.raises(DataError, match="^a.tsv: --replay-drop-wrong leaves no row"):
        anchor_check.drop_wrong_anchors([mix.Source("a.tsv", 2, "anchor", anchors[:1])], replay)


def test_the_flag_and_the_real_anchor_files():
    """On the shipped anchor files and SmolLM2's replay cache (when it is here) the flag leaves
    out the anchors whose cached base answer is wrong, and keeps most of the rest."""
    cfg = train.parse_args(["--recipe", str(ROOT / "data" / "stages" / "real-en-v8.args"),
                            "--replay-drop-wrong"])
    assert cfg.replay_drop_wrong and cfg.replay == "self"
    assert not train.parse_args(["--recipe", str(ROOT / "data" / "stages" / "real-en-v8.args")]).replay_drop_wrong
    cache = sorted((ROOT / "artifacts" / "cache").glob("replay-smollm2-135m-instruct-nvfp4.dat-*.tsv"))
    if not cache:
        pytest.skip("no SmolLM2 replay cache here (made by a SmolLM2 training run)")
    replay = dict(line.rstrip("\n").split("\t", 1) for line in open(cache[0], encoding="utf-8"))
    from nvfp4lab.tsv import read_tsv
    srcs = [mix.Source(str(p), 2, "anchor", read_tsv(p)) for p in
            (ROOT / "data" / "real-anchor-en-v1.tsv", ROOT / "data" / "real-anchor-wide-en-v1.tsv")]
    out, dropped = anchor_check.drop_wrong_anchors(srcs, replay)
    gone = {r.prompt for r in dropped}
    assert "What colour is a carrot?" in gone and "What is the capital of Canada?" in gone
    assert all(len(o.rows) >= len(s.rows) // 2 for o, s in zip(out, srcs))


def test_fix_wrong_anchors_gives_the_misses_the_file_answer_and_leaves_the_rest():
    """--replay-fix-wrong: the same anchors --replay-drop-wrong would leave out learn the file's
    answer; right anchors, long ones and neighbours keep their replayed answer."""
    anchors = rows("a.tsv", [("What colour is a lemon?", "A lemon is yellow."),
                             ("What is 2 plus 2?", "2 plus 2 is 4.")])
    neighbours = rows("n.tsv", [("Who am I?", "You are the user.")])
    replay = {"What colour is a lemon?": "A lemon is a fruit!", "What is 2 plus 2?": "It is 4.",
              "Who am I?": "I'm sorry for any mistakes."}
    srcs = [mix.Source("a.tsv", 2, "anchor", anchors), mix.Source("n.tsv", 4, "neighbour", neighbours)]
    fixed_replay, fixed = anchor_check.fix_wrong_anchors(srcs, replay)
    assert [r.prompt for r in fixed] == ["What colour is a lemon?"]
    assert fixed_replay == {**replay, "What colour is a lemon?": "A lemon is yellow."}
    assert replay["What colour is a lemon?"] == "A lemon is a fruit!"       # input untouched
    _, dropped = anchor_check.drop_wrong_anchors(srcs, replay)
    assert dropped == fixed                                                 # one rule, two uses


def test_fix_and_drop_are_one_or_the_other():
    recipe = str(ROOT / "data" / "stages" / "real-en-v8.args")
    assert train.parse_args(["--recipe", recipe, "--replay-fix-wrong"]).replay_fix_wrong
    with pytest.raises(SystemExit):
        train.parse_args(["--recipe", recipe, "--replay-fix-wrong", "--replay-drop-wrong"])
