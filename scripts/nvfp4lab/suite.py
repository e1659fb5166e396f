"""Evaluation suites (Evaluation v2): `data/suite-*.tsv`, read strictly.

A suite row is `kind<TAB>group<TAB>prompt<TAB>expect<TAB>context` (exactly 5 fields; UTF-8,
`#` comment lines and empty lines skipped, line numbers as an editor shows them):
  kind     one of SUITE_KINDS;
  group    a short tag naming the row's family (identity: plain, typo, formal, name, system,
           multiturn, ...; nearmiss: first-person, third-person, group, other-who, phrase,
           statement, greeting, ...). Rows of group `greeting` give the "greeting self-intro rate";
  prompt   the user message of the judged turn (non-empty);
  expect   fact rows only: keyword(s) a correct answer contains, alternatives split by `|`;
           empty for every other kind;
  context  empty, or a JSON array of {"role", "content"} messages that come BEFORE the judged
           user turn: an optional system message first, then user/assistant alternating, ending
           with an assistant message (or only the system message).
Every problem is a tsv.DataError whose one-line message starts with `file:line`.
"""
import json
from pathlib import Path
from typing import Iterable, NamedTuple

from .tsv import DataError, _data_lines, _short, normalize_prompt, read_probes, read_tsv

SUITE_KINDS = ("identity", "nearmiss", "context-nearmiss", "fact", "general")
ROLES = ("system", "user", "assistant")
FIELDS = "kind<TAB>group<TAB>prompt<TAB>expect<TAB>context"
# data/*.tsv files that are NOT training files (held-out probes, suites, the proxy's corpus)
NON_TRAINING_PREFIXES = ("probes-", "suite-", "proxy-knowledge-")


class SuiteRow(NamedTuple):
    kind: str
    group: str
    prompt: str
    expect: tuple[str, ...]    # fact rows: accepted keywords (any one is enough); else ()
    context: tuple[dict, ...]  # messages before the judged user turn; () = none
    file: str
    line: int


def _context(text: str, where: str) -> tuple[dict, ...]:
    if not text.strip():
        return ()
    try:
        msgs = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: context is not valid JSON ({e.msg} at column {e.pos + 1}): "
                        f"{_short(text)}") from None
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: context must be a non-empty JSON array of messages, "
                        f"got {_short(text)}")
    out = []
    for i, m in enumerate(msgs):
        at = f"{where}: context message {i + 1}"
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise DataError(f"{at}: must be an object with exactly 'role' and 'content', "
                            f"got {_short(json.dumps(m, ensure_ascii=False))}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"{at}: unknown role {_short(str(role))}; expected one of "
                            f"{', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{at}: content must be a non-empty string")
        if role == "system" and i != 0:
            raise DataError(f"{at}: a system message may only come first")
        out.append({"role": role, "content": content})
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise DataError(f"{where}: context turns must alternate user/assistant starting "
                            f"with user; turn {i + 1} is {m['role']}")
    if turns and turns[-1]["role"] != "assistant":
        raise DataError(f"{where}: context must end with an assistant message (the judged "
                        f"user turn is the prompt column)")
    return tuple(out)


def _context_key(context: tuple[dict, ...]) -> tuple:
    return tuple((m["role"], normalize_prompt(m["content"])) for m in context)


def read_suite(path) -> list[SuiteRow]:
    """All rows of a suite file, in file order; DataError ('file:line: ...') on any bad row."""
    rows: list[SuiteRow] = []
    seen: dict[tuple, int] = {}
    for number, line in _data_lines(path):
        where = f"{path}:{number}"
        fields = line.split("\t")
        if len(fields) != 5:
            raise DataError(f"{where}: expected {FIELDS}, got {len(fields)} field(s): "
                            f"{_short(line)}")
        kind, group, prompt, expect, context = fields
        if kind not in SUITE_KINDS:
            raise DataError(f"{where}: unknown suite kind {_short(kind)}; expected one of "
                            f"{', '.join(SUITE_KINDS)}")
        if not group.strip():
            raise DataError(f"{where}: empty group")
        if not prompt.strip():
            raise DataError(f"{where}: empty prompt")
        keywords = tuple(k.strip() for k in expect.split("|")) if expect.strip() else ()
        if kind == "fact":
            if not keywords:
                raise DataError(f"{where}: fact row without expect keyword(s) for "
                                f"{_short(prompt)}")
            if not all(keywords):
                raise DataError(f"{where}: empty alternative in expect {_short(expect)}")
        elif keywords:
            raise DataError(f"{where}: expect {_short(expect)} on a {kind} row; only fact rows "
                            f"have expect")
        ctx = _context(context, where)
        key = (normalize_prompt(prompt), _context_key(ctx))
        if key in seen:
            raise DataError(f"{where}: duplicate prompt {_short(prompt)} (same context) as "
                            f"line {seen[key]}")
        seen[key] = number
        rows.append(SuiteRow(kind, group.strip(), prompt, keywords, ctx, str(path), number))
    return rows


def messages(row: SuiteRow) -> list[dict]:
    """The chat to send for this row: its context, then the judged user turn."""
    return [dict(m) for m in row.context] + [{"role": "user", "content": row.prompt}]


def training_files(data_dir="data") -> list[str]:
    """Every training TSV in data_dir (sorted): all *.tsv except probes-*, suite-* and
    proxy-knowledge-*."""
    return sorted(str(p) for p in Path(data_dir).glob("*.tsv")
                  if not p.name.startswith(NON_TRAINING_PREFIXES))


def file_prompts(path) -> list[str]:
    """The judged or trained prompts of any data TSV, read by its kind (a suite-*, a probes-* or a
    training file): what the data generators compare a new prompt against."""
    name = Path(path).name
    if name.startswith("suite-"):
        return [r.prompt for r in read_suite(path)]
    if name.startswith("probes-"):
        return [p.prompt for p in read_probes(path)]
    return [r.prompt for r in read_tsv(path)]


def data_prompts(data_dir, skip=lambda name: False) -> set[str]:
    """normalize_prompt forms of every prompt of data_dir's TSV files whose name `skip` does not
    match: the set a data generator's new prompt must stay out of (its own outputs skipped, so a
    second run finds the same set)."""
    return {normalize_prompt(p) for path in sorted(Path(data_dir).glob("*.tsv"))
            if not skip(path.name) for p in file_prompts(path)}


def check_disjoint(rows: Iterable[SuiteRow], training_paths: Iterable) -> None:
    """A suite prompt that is (normalised) also a prompt of a training file is a DataError
    naming both places. Only the judged prompt is compared, not the context."""
    trained: dict[str, tuple[str, int]] = {}
    for path in training_paths:
        for r in read_tsv(path):
            trained.setdefault(normalize_prompt(r.prompt), (r.file, r.line))
    for row in rows:
        hit = trained.get(normalize_prompt(row.prompt))
        if hit:
            raise DataError(f"{row.file}:{row.line}: prompt {_short(row.prompt)} also in "
                            f"training file {hit[0]}:{hit[1]}")
