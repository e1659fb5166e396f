"""Back to the initial weights: move every derived stage artifact to artifacts/_trash/<time>/.

    python scripts/reset.py [--artifacts artifacts] [--dry-run]

Nothing is deleted. The base weights, the proxy (artifacts/proxy/) and the records
(檔案說明清單.md, caches) stay where they are; what moved is printed and logged in doc/DevLog.md.
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import devlog, paths  # noqa: E402

DERIVED_SUFFIXES = (".dat", "-loss.svg")
KEEP = {"檔案說明清單.md"}


def derived_artifacts(folder: str, protected: list[str]) -> list[str]:
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name in KEEP or not os.path.isfile(path) or not name.endswith(DERIVED_SUFFIXES):
            continue
        if any(os.path.exists(p) and os.path.samefile(p, path) for p in protected):
            continue
        out.append(path)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default=str(paths.ROOT / "artifacts"))
    p.add_argument("--base", default=paths.USER_BASE_DAT, help="never moved")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    if not os.path.isdir(args.artifacts):
        print(f"{args.artifacts}: nothing to reset (no such folder)")
        return 0
    moving = derived_artifacts(args.artifacts, [args.base, str(paths.PROXY_DAT)])
    if not moving:
        print("reset: no derived artifacts; the initial weights are already what stages start from")
        return 0
    trash = os.path.join(args.artifacts, "_trash", devlog.now("%Y%m%d-%H%M%S"))
    lines = []
    for path in moving:
        dst = os.path.join(trash, os.path.basename(path))
        lines.append(f"- {path} -> {dst}")
        if not args.dry_run:
            os.makedirs(trash, exist_ok=True)
            shutil.move(path, dst)
    print(("would move" if args.dry_run else "moved") + f" {len(moving)} file(s):")
    print("\n".join(lines))
    if not args.dry_run:
        devlog.append_devlog("reset to the initial weights", [
            ("指令/Command", devlog.code(devlog.command_line())),
            ("產物/Output", "\n".join(lines)),
            ("結論/Conclusion", f"Stages start again from {args.base} (or the proxy); "
                              f"moved files are in {trash}, nothing was deleted."),
        ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
