"""Write the wide anchor file: ordinary requests the edit must leave as the base answers them.

    python scripts/make_anchors.py [--out-dir data] [--source data/anchors-source-v1.txt]
                                   [--out-name real-anchor-wide-en-v1.tsv]

Reads a hand-written list (data/anchors-source-v1.txt: facts of many kinds, writing, advice,
explanations, code, small tasks) and writes data/real-anchor-wide-en-v1.tsv; the second pool is
`--source data/anchors-source-v2.txt --out-name real-anchor-wide-en-v2.tsv`, which leaves out
every prompt v1 already has. With `--replay self`
the trainer replaces its answers by the base model's own and keeps them with KL, so the file is
"what must not move", at a scale (hundreds of rows) where KL covers more than one kind of fact.

No suite question is trained on, even reworded: a prompt is dropped (and counted, never shown)
when it equals any prompt of the data files, or when its content words are close to those of a
suite's fact / general prompt (any split). Deterministic; writes new files only
(make_suites.write_new_files).
"""
import argparse
import re
import sys
from pathlib import Path

from make_suites import expand, read_source, write_new_files
from nvfp4lab.anchor_check import words
from nvfp4lab.suite import file_prompts, read_suite
from nvfp4lab.tsv import DataError, normalize_prompt

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "anchors-source-v1.txt"
OUT_NAME = "real-anchor-wide-en-v1.tsv"
WIDE = re.compile(r"real-anchor-wide-en-v(\d+)\.tsv")
STOP = set("a an the is are was were be of in on at to for and or do does did what which who how "
           "when where why me my you your i it its this that these those with by from into can "
           "tell name give about one some s".split()
           # the question's frame, not its subject: "7 plus 6" and "7 plus 8" are other facts
           + "many much have has plus minus times divided power squared root capital city colour "
             "opposite sound make makes legs sides day days month comes after before country "
             "language currency called".split())


def content_words(text: str) -> frozenset:
    return words(text) - STOP


def close(a: frozenset, b: frozenset) -> bool:
    """Same question reworded: most content words shared (Jaccard >= 0.5), or all of the one's
    words (two or more) inside the other. One shared number or noun alone ("4" in "3 plus 4" and
    "4 times 12") is another question."""
    if not a or not b:
        return False
    small, large = sorted((a, b), key=len)
    return len(a & b) / len(a | b) >= 0.5 or (len(small) >= 2 and small <= large)


def known_prompts(data_dir: Path, version: int = 1):
    """(every normalised prompt of the data files, content words of the suites' fact/general
    rows). Wide anchor files of `version` or later are not read: v1 regenerates as it was
    written before v2 existed, and v2 leaves out v1's prompts."""
    seen, guarded = set(), []
    for path in sorted(data_dir.glob("*.tsv")):
        later = WIDE.fullmatch(path.name)
        if later and int(later.group(1)) >= version:
            continue
        if path.name.startswith("suite-"):
            for r in read_suite(path):
                seen.add(normalize_prompt(r.prompt))
                if r.kind in ("fact", "general"):
                    guarded.append(content_words(r.prompt))
        elif path.name != "proxy-knowledge-v1.tsv":
            seen |= {normalize_prompt(p) for p in file_prompts(path)}
    return seen, guarded


def version_of(out_name: str) -> int:
    """2 of 'real-anchor-wide-en-v2.tsv' (the header says which file it is)."""
    m = re.search(r"-v(\d+)\.tsv$", out_name)
    if not m:
        raise DataError(f"{out_name}: an output name ends in -vN.tsv")
    return int(m.group(1))


def build(source=SOURCE, data_dir=ROOT / "data", out_name=OUT_NAME) -> tuple[dict, dict]:
    """({file name: (rows, header)}, {section: dropped count})."""
    version = version_of(out_name)
    seen, guarded = known_prompts(data_dir, version)
    rows, dropped = [], {}
    for section, items in read_source(source).items():
        for text, answer, line in items:
            if not answer:
                raise DataError(f"{source}:{line}: no `=> answer`")
            for prompt in expand(text):
                key, words = normalize_prompt(prompt), content_words(prompt)
                if key in seen or any(close(words, g) for g in guarded):
                    dropped[section] = dropped.get(section, 0) + 1
                    continue
                seen.add(key)
                rows.append((prompt, answer))
    header = (f"Wide anchor rows (English), v{version}: {len(rows)} ordinary requests the edit must leave "
              f"as the base answers them\n(facts, writing, advice, explanations, code, small tasks; "
              f"--replay self replaces the answers by the base's own).\n"
              f"{sum(dropped.values())} source prompts were dropped as equal or close to a suite / "
              f"data-file prompt.\ngenerated by scripts/make_anchors.py from "
              f"{source_name(source)}; never edit by hand")
    return {out_name: (rows, header)}, dropped


def source_name(source) -> str:
    """The source as the header names it: repo-relative where it lies in the repo."""
    path = Path(source).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "data")
    ap.add_argument("--source", type=Path, default=SOURCE)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data")
    ap.add_argument("--out-name", default=OUT_NAME, help="the file written (a new -vN name)")
    args = ap.parse_args(argv)
    try:
        files, dropped = build(args.source, args.data_dir, args.out_name)
    except DataError as e:
        print(f"make_anchors: {e}", file=sys.stderr)
        return 1
    print("dropped as close to a suite or data prompt: "
          + (", ".join(f"{s} {n}" for s, n in sorted(dropped.items())) or "none"))
    return write_new_files(files, args.out_dir, "make_anchors")


if __name__ == "__main__":
    sys.exit(main())
