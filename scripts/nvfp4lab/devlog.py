"""The user's records: doc/DevLog.md and artifacts/檔案說明清單.md (append only), loss-curve SVG.

Both files are only ever appended to (opened with "a"), never rewritten, so earlier entries
survive every run; the artifact list gets its header once, when it does not exist yet.
"""
import datetime
import os
import shlex
import sys

from . import paths
from .atomic import AtomicFile

ARTIFACT_HEADER = """# 檔案說明清單

更新時間：{now}

| 檔案 | 用途 | 建議 |
|---|---|---|
"""


def now(fmt="%Y-%m-%d %H:%M") -> str:
    return datetime.datetime.now().strftime(fmt)


def repo_relative(arg: str) -> str:
    """An argument naming a path inside the repository, as a path relative to its root: the log
    must not record where the checkout happened to live (a home or temporary directory)."""
    if os.path.isabs(arg):
        try:
            rel = os.path.relpath(arg, paths.ROOT)
        except ValueError:      # another drive
            return arg
        if not rel.startswith(".."):
            return rel
    return arg


def scrub_output(text: str) -> str:
    """A subprocess's output as the log records it: the interpreter (the guard's `cmd=` line
    names it) as `python` and repository paths relative to the root, like command_line."""
    text = text.replace(sys.executable, "python")
    return text.replace(str(paths.ROOT).rstrip(os.sep) + os.sep, "")


def command_line() -> str:
    """The command as run, repository paths relative to its root (the guard passes its own
    prefix in NVFP4LAB_GUARD_PREFIX)."""
    argv = [repo_relative(a) for a in sys.argv]
    prefix = os.environ.get("NVFP4LAB_GUARD_PREFIX", "")
    if prefix:   # `guard.py ... script` already names the interpreter
        return f"{prefix} {shlex.join(argv)}"
    return shlex.join(["python", *argv])


def append_devlog(title: str, sections: list[tuple[str, str]], path=None) -> None:
    """One `## <date> <title>` entry with `### heading` sections, appended."""
    path = path or paths.DEVLOG
    os.makedirs(os.path.dirname(path), exist_ok=True)
    parts = [f"\n## {now()} {title}\n"]
    for head, body in sections:
        parts.append(f"\n### {head}\n\n{body.rstrip()}\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(parts))


def append_artifact(file: str, purpose: str, advice: str, path=None) -> None:
    """A row in the kept-artifacts table plus the original's one-line bullet, appended."""
    path = path or paths.ARTIFACT_LIST
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fresh = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as f:
        if fresh:
            f.write(ARTIFACT_HEADER.format(now=now()))
        f.write(f"| {repo_relative(file)} | {purpose} | {advice} |\n")
        f.write(f"- {os.path.basename(file)}: {now('%Y-%m-%d')} {purpose}\n")


def code(text: str) -> str:
    return f"```\n{text.rstrip()}\n```"


def loss_svg(losses: list[float], path: str, title: str) -> None:
    """A plain SVG line chart of loss per step (no plotting library needed)."""
    w, h, pad = 640, 320, 40
    finite = [x for x in losses if x == x and abs(x) != float("inf")]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    n = max(len(losses) - 1, 1)
    pts = " ".join(f"{pad + i * (w - 2 * pad) / n:.1f},{h - pad - (x - lo) * (h - 2 * pad) / (hi - lo):.1f}"
                   for i, x in enumerate(losses) if x in finite)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
           f'<rect width="{w}" height="{h}" fill="white"/>'
           f'<text x="{pad}" y="20" font-size="14">{title}</text>'
           f'<text x="4" y="{pad}" font-size="11">{hi:.3f}</text>'
           f'<text x="4" y="{h - pad}" font-size="11">{lo:.3f}</text>'
           f'<text x="{w - pad}" y="{h - 10}" font-size="11">step {len(losses)}</text>'
           f'<polyline fill="none" stroke="steelblue" stroke-width="2" points="{pts}"/></svg>\n')
    with AtomicFile(path) as f:
        f.write(svg.encode("utf-8"))
