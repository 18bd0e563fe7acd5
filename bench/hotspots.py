"""Summarise a py-spy ``--format raw`` profile: ``python -m bench.hotspots FILE [N]``.

Prints the functions with the most samples on top of the stack (self time) and
the most samples anywhere in the stack (inclusive time), as a share of all
samples. ``python -m bench.run --py-spy FILE`` records the bridge that way
during the fan-out steps.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def summarise(path: Path, top: int = 15) -> dict[str, list[tuple[str, float]]]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {"self": [], "inclusive": []}
    return {
        "samples": [("total", float(total))],
        "self": [(f, round(100 * n / total, 1)) for f, n in own.most_common(top)],
        "inclusive": [(f, round(100 * n / total, 1)) for f, n in inclusive.most_common(top)],
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    top = int(argv[1]) if len(argv) > 1 else 15
    summary = summarise(Path(argv[0]), top)
    for kind in ("self", "inclusive"):
        print(f"-- {kind} (% of samples)")
        for frame, share in summary.get(kind, []):
            print(f"{share:6.1f}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
