"""Copy the reference fixtures (golden tensors, checkpoint manifests and their README) into the repo.

The tests read `tests/reference/` so a clone runs anywhere; new or regenerated fixtures arrive in the shared
reference directory (default `../shared/reference` beside the repo) and this script brings them in and says
what changed. Files only in the repo are listed, and removed only with `--prune`.

    python scripts/refresh_reference.py [SOURCE] [--check] [--prune]
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "tests" / "reference"
DEFAULT_SOURCE = REPO.parent / "shared" / "reference"
# What the tests and the parity work read: the fixture spec, the golden tensors and the layouts.
PARTS = ("README.md", "tiny", "manifests")


def _files(root: Path) -> set[Path]:
    found: set[Path] = set()
    for part in PARTS:
        path = root / part
        if path.is_file():
            found.add(Path(part))
        elif path.is_dir():
            found |= {p.relative_to(root) for p in path.rglob("*") if p.is_file()}
    return found


def plan(source: Path, dest: Path) -> dict[str, list[Path]]:
    """Which files are new, changed, unchanged, or only in `dest`."""
    theirs, ours = _files(source), _files(dest)
    changes: dict[str, list[Path]] = {"new": [], "changed": [], "unchanged": [], "only here": []}
    for rel in sorted(theirs):
        if rel not in ours:
            changes["new"].append(rel)
        elif filecmp.cmp(source / rel, dest / rel, shallow=False):
            changes["unchanged"].append(rel)
        else:
            changes["changed"].append(rel)
    changes["only here"] = sorted(ours - theirs)
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE, help="shared reference dir")
    parser.add_argument("--dest", type=Path, default=DEST, help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if anything differs")
    parser.add_argument("--prune", action="store_true", help="delete files the source no longer has")
    args = parser.parse_args(argv)
    if not (args.source / "README.md").is_file():
        print(f"error: {args.source} is not a reference directory (no README.md)", file=sys.stderr)
        return 2
    changes = plan(args.source, args.dest)
    for kind in ("new", "changed", "only here"):
        for rel in changes[kind]:
            print(f"{kind:>9}  {rel}")
    print(f"{len(changes['unchanged'])} unchanged")
    differs = bool(changes["new"] or changes["changed"] or (args.prune and changes["only here"]))
    if args.check:
        return 1 if differs else 0
    for rel in changes["new"] + changes["changed"]:
        target = args.dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.source / rel, target)  # not copy2: the shared files are read-only
    if args.prune:
        for rel in changes["only here"]:
            (args.dest / rel).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
