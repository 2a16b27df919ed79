"""`make bench`: run every bench/bench_*.py in turn (or the ones named) and summarise.

Each script prints its own table and exits non-zero when it misses its target; figures are
recorded by hand in docs/performance.md together with the command that produced them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    wanted = set(argv)
    scripts = sorted(
        p for p in HERE.glob("bench_*.py") if not wanted or p.stem.removeprefix("bench_") in wanted
    )
    failures = []
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        code = subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode
        if code:
            failures.append(script.stem)
    print("\nbenchmarks missing their target: " + (", ".join(failures) if failures else "none"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
