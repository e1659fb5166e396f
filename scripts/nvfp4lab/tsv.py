"""Training and probe TSV files: read strictly, write new files only, atomically.

Training rows are `prompt<TAB>target`, split at the FIRST tab (so a target may hold more tabs).
Probe rows are `kind<TAB>prompt[<TAB>expect]`, kind in {identity, anchor, nearmiss}.
Both: UTF-8, empty lines and lines starting with `#` are skipped, a trailing `\\r` is dropped.
Every problem is a DataError whose one-line message starts with `file:line`, so a bad row in a
thousand-line file is found in one look.
"""
import os
import unicodedata
from pathlib import Path
from typing import Iterable, NamedTuple

from .atomic import AtomicFile

PROBE_KINDS = ("identity", "anchor", "nearmiss")


class DataError(ValueError):
    """A data file (or a row about to be written) that breaks the format; one line, names where."""


class Row(NamedTuple):
    prompt: str
    target: str
    file: str
    line: int


class Probe(NamedTuple):
    kind: str
    prompt: str
    expect: str   # keyword a correct answer must contain; "" = no keyword check
    file: str
    line: int


def is_cjk(ch: str) -> bool:
    """A CJK ideograph, kana or hangul syllable: a letter to str.isalpha(), but each one a word,
    and a prompt with any of them is answered in that language, not in English."""
    o = ord(ch)
    return (0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x3040 <= o <= 0x30FF
            or 0xAC00 <= o <= 0xD7AF or 0x20000 <= o <= 0x2FA1F)


def normalize_prompt(text: str) -> str:
    """The form two prompts are compared in for "is this probe held out": NFKC (full-width ->
    ASCII), casefolded, with whitespace, punctuation, symbols and control characters dropped,
    so `你是誰？` == `你是誰` and `Who am I?` == `who am i`."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in text if unicodedata.category(c)[0] not in "PSZC")


def _short(text: str, n: int = 60) -> str:
    # repr() keeps the message on one line even when the offending text has odd characters
    return repr(text if len(text) <= n else text[:n] + "...")


def _data_lines(path) -> list[tuple[int, str]]:
    """(line number, text) of every non-empty, non-comment line; strict UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a file") from None
    if raw.startswith(b"\xef\xbb\xbf"):  # a leading BOM (Windows editors) is tolerated
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")  # strict: a mis-encoded prompt must not train silently
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
    out = []
    # split("\n"), not splitlines(): splitlines also breaks on \x0b, \x1c, U+2028 ... and would
    # shift every later line number away from what an editor shows
    for number, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip() or line.startswith("#"):
            continue
        out.append((number, line))
    return out


def read_tsv(path) -> list[Row]:
    """All `prompt<TAB>target` rows of a training file, in file order."""
    rows = []
    for number, line in _data_lines(path):
        where = f"{path}:{number}"
        if "\t" not in line:
            raise DataError(f"{where}: no tab; expected prompt<TAB>target, got {_short(line)}")
        prompt, target = line.split("\t", 1)
        if not prompt.strip():
            raise DataError(f"{where}: empty prompt")
        if not target.strip():
            raise DataError(f"{where}: empty target for prompt {_short(prompt)}")
        rows.append(Row(prompt, target, str(path), number))
    return rows


def read_lines(path) -> list[tuple[int, str]]:
    """(line number, text) of every non-empty, non-comment line (e.g. a pool of system
    prompts), in file order."""
    lines = [(number, line.strip()) for number, line in _data_lines(path)]
    if not lines:
        raise DataError(f"{path}: no lines (every line is empty or a # comment)")
    return lines


def read_probes(path) -> list[Probe]:
    """All `kind<TAB>prompt[<TAB>expect]` rows of a probe file, in file order."""
    probes = []
    for number, line in _data_lines(path):
        where = f"{path}:{number}"
        fields = line.split("\t")
        if len(fields) not in (2, 3):
            raise DataError(f"{where}: expected kind<TAB>prompt[<TAB>expect], "
                            f"got {len(fields)} field(s): {_short(line)}")
        kind, prompt = fields[0], fields[1]
        expect = fields[2] if len(fields) == 3 else ""
        if kind not in PROBE_KINDS:
            raise DataError(f"{where}: unknown probe kind {_short(kind)}; "
                            f"expected one of {', '.join(PROBE_KINDS)}")
        if not prompt.strip():
            raise DataError(f"{where}: empty prompt")
        probes.append(Probe(kind, prompt, expect.strip(), str(path), number))
    return probes


def _fields(row) -> tuple:
    # a Row carries its origin (file, line); only prompt and target are data
    if isinstance(row, Row):
        return (row.prompt, row.target)
    return tuple(row)


def render_tsv(rows: Iterable, header_comment: str | None = None, path="<rows>") -> bytes:
    """The exact bytes write_new_tsv writes; rows are (prompt, target) or (kind, prompt[, expect]),
    or a plain str for a `# comment` line.

    Refuses anything that would not read back as written: a tab/newline/CR inside a field,
    an empty first or second field, a first field starting with `#` (it would read as a comment).
    """
    lines = []
    if header_comment:
        lines += ["# " + c if c else "#" for c in header_comment.split("\n")]
    for i, row in enumerate(rows, start=1):
        where = f"{path}: row {i}"
        if isinstance(row, str):  # a plain string is a comment line among the rows
            if "\n" in row or "\r" in row:
                raise DataError(f"{where}: comment {_short(row)} contains a line break")
            lines.append("# " + row)
            continue
        fields = _fields(row)
        if len(fields) < 2:
            raise DataError(f"{where}: needs at least 2 fields, got {len(fields)}")
        for f in fields:
            if not isinstance(f, str):
                raise DataError(f"{where}: field {_short(str(f))} is {type(f).__name__}, not str")
            for bad, name in (("\t", "a tab"), ("\n", "a newline"), ("\r", "a carriage return")):
                if bad in f:
                    raise DataError(f"{where}: field {_short(f)} contains {name}")
        if not fields[0].strip() or not fields[1].strip():
            raise DataError(f"{where}: empty field in {_short(' | '.join(fields))}")
        if fields[0].startswith("#"):
            raise DataError(f"{where}: {_short(fields[0])} starts with '#' and would read back "
                            f"as a comment")
        lines.append("\t".join(fields))
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_new_tsv(path, rows: Iterable, header_comment: str | None = None) -> int:
    """Write a NEW data file, atomically (atomic.AtomicFile); returns the number of data rows
    (comments not counted). Never overwrites: old data stays as it was trained on, and a changed
    recipe must get a new file name."""
    path = Path(path)
    rows = list(rows)
    if path.exists():
        raise DataError(f"{path}: already exists; refusing to overwrite (use a new version suffix)")
    data = render_tsv(rows, header_comment, path)
    with AtomicFile(path) as f:
        f.write(data)
        os.fchmod(f.fileno(), 0o644)   # data files are read by all, whatever the umask
        if path.exists():   # someone raced us between the check above and now
            raise DataError(f"{path}: appeared while writing; refusing to overwrite")
    return sum(1 for r in rows if not isinstance(r, str))
