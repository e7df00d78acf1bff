#!/usr/bin/env python
"""What a call of the GPU machine would carry from this checkout, against its 64 MiB limit.

The device tool copies the working tree (tracked files present on disk, and untracked files git does not ignore)
plus the ignored paths a call names in ``carry`` (here: ``.whl``, the wheels ``gpu_check.sh --wheels`` builds). Over
the limit the call is refused whole, so this says so first, with the largest files and which of them the GPU check
does not read (it builds random-weight models: trained drafts and testbeds stay behind).

    python scripts/device_travel.py                 # the tree and .whl/
    python scripts/device_travel.py --carry .whl .gl
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

LIMIT = 64 * 1024 * 1024
NOT_READ_ON_THE_DEVICE = ("drafts/", "models/", "notebooks/", "results/")  # gpu_check.sh uses random weights


def travelling(repo: Path, carry: list[str]) -> dict[str, int]:
    """path -> bytes of everything a device call would copy from ``repo``."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    files = {name.decode() for name in listed if name}
    for path in carry:
        root = repo / path
        files |= {str(p.relative_to(repo)) for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()}
    return {f: (repo / f).stat().st_size for f in sorted(files) if (repo / f).is_file()}  # a deleted file stays behind


def report(sizes: dict[str, int], limit: int = LIMIT) -> tuple[bool, str]:
    """(fits, the lines that say so)."""
    total = sum(sizes.values())
    spare = sum(b for f, b in sizes.items() if f.startswith(NOT_READ_ON_THE_DEVICE))
    lines = [f"device_travel: {total / 2**20:.1f} MiB would travel ({len(sizes)} files), limit {limit / 2**20:.0f} MiB"]
    if total > limit:
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:6]
        lines.append("over the limit: the call would be refused. Largest: "
                     + ", ".join(f"{f} {b / 2**20:.1f} MiB" for f, b in largest))
        lines.append(f"{spare / 2**20:.1f} MiB of it is under {', '.join(NOT_READ_ON_THE_DEVICE)}, which the GPU check "
                     f"does not read: set those folders aside for the call (mv them out of the checkout, and back after)"
                     + (", which brings it under the limit" if total - spare <= limit else ""))
    return total <= limit, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    p.add_argument("--carry", nargs="*", default=[".whl"], help="ignored paths the call names in carry")
    args = p.parse_args(argv)
    fits, text = report(travelling(Path(args.repo), args.carry))
    print(text)
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
