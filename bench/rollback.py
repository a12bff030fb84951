"""The rollback steps' benches in one run: the container step and the sql step, with their targets.

Runs ``bench/container_step.py`` and ``bench/sql_step.py`` as they are (each
in its own process) and prints their figures, then one line per target:

- container step: median within 1.5x a bare ``docker stop`` + ``docker run``;
- sql step (seed 000's migration): no target is set for it; its mean is
  printed next to the figure recorded in bench/README.md (50.2 ms).

Run: ``.venv/bin/python bench/rollback.py [--repeat N] [--runs N]``
(needs the Docker engine and the local PostgreSQL).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_RATIO = 1.5
RECORDED_SQL_MS = 50.2
TIMEOUT = 600.0


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(HERE / script), *args],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{script} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="container step repetitions")
    parser.add_argument("--runs", type=int, default=5, help="sql step runs")
    args = parser.parse_args()

    container = run("container_step.py", "--repeat", str(args.repeat))
    sql = run("sql_step.py", "--runs", str(args.runs))
    print("container step (bench/container_step.py)")
    print("  " + container.strip().replace("\n", "\n  "))
    print("sql step (bench/sql_step.py)")
    print("  " + sql.strip().replace("\n", "\n  "))

    ratio = re.search(r"ratio\s+([\d.]+)x", container)
    mean = re.search(r"mean ([\d.]+) ms", sql)
    print("targets")
    if ratio:
        value = float(ratio.group(1))
        met = "met" if value <= TARGET_RATIO else "NOT met"
        print(f"  container step / stop + run   {value:.2f}x (target <= {TARGET_RATIO:g}x: {met})")
    if mean:
        value = float(mean.group(1))
        print(
            f"  sql step mean                 {value:.1f} ms "
            f"(no target; {RECORDED_SQL_MS:g} ms recorded before)"
        )


if __name__ == "__main__":
    main()
