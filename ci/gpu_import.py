"""`make gpu-import FILES="..."`: unpack what a GPU call (ci/gpu_call.sh) brought back, then regenerate the
results page. records.tar.gz holds the run records that changed there: each replaces the record of its preset
here unless the one here holds a longer schedule (the rule `metaexp reproduce` keeps). state.tar.gz holds the
run directories of presets not yet finished: they go to .gpu/state/runs, where the next call resumes them.

    python ci/gpu_import.py FILE... [--records results/records] [--state .gpu/state] [--page docs/results.md]
"""

import argparse
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from metaexp import reproduce
from metaexp.reproduce import last_step


def unpack(archive: Path, into: Path) -> list:
    """The top-level folders of `archive`, extracted under `into` (tar's `data` filter: no absolute paths, no
    `..`, no links out, no device files)."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return sorted(p for p in into.iterdir() if p.is_dir())


def replace(folder: Path, target: Path) -> None:
    """Put `folder` at `target`, the old one moved aside first and removed only once the new one is there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    shutil.move(str(folder), str(target))
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--records", type=Path, default=Path("results/records"))
    parser.add_argument("--state", type=Path, default=Path(".gpu/state"))
    parser.add_argument("--page", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args(argv)
    changed = False
    for archive in args.files:
        if archive.name.endswith(".log"):
            print(f"{archive}: the call's log, read it there")
            continue
        kind = "records" if archive.name.startswith("records") else "state" if archive.name.startswith("state") else ""
        if not kind:
            print(f"{archive}: neither records*.tar.gz nor state*.tar.gz; left alone", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as scratch:
            for folder in unpack(archive, Path(scratch)):
                target = args.records / folder.name if kind == "records" else args.state / "runs" / folder.name
                if kind == "records" and last_step(target) > last_step(folder):
                    print(f"{target} holds a longer schedule than the call's ({last_step(folder)} steps): kept")
                    continue
                replace(folder, target)
                changed |= kind == "records"
                print(f"{kind}: {target}")
    if changed:
        reproduce.main(["--table-only", "--records", str(args.records), "--page", str(args.page)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
