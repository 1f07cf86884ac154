"""Shared helpers for benchmark scripts: timing medians and writing sections of docs/benchmarks.md."""

from __future__ import annotations

import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SHARED = Path(os.environ.get("SYNOPT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def materialize(root: str | Path, quiet: bool = False) -> None:
    """Write the standard dataset layouts of ``SHARED/data`` under ``root`` (its materialize.py)."""
    subprocess.run([sys.executable, str(SHARED / "data" / "materialize.py"), str(root)], check=True,
                   stdout=subprocess.DEVNULL if quiet else None)


def median_time(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_ratio(fn_b: Callable[[], object], fn_a: Callable[[], object], pairs: int = 21,
                 warmup: int = 2) -> tuple[float, list[float], float, float]:
    """Median of time(fn_b)/time(fn_a) over back-to-back pairs (order alternating), robust to the machine's drift.

    Returns (median ratio, all ratios, median time of a, median time of b) in seconds.
    """
    for _ in range(warmup):
        fn_a()
        fn_b()
    ratios, ta, tb = [], [], []
    for i in range(pairs):
        order = (fn_a, fn_b) if i % 2 == 0 else (fn_b, fn_a)
        times = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            times[fn] = time.perf_counter() - t0
        ta.append(times[fn_a])
        tb.append(times[fn_b])
        ratios.append(times[fn_b] / times[fn_a])
    return statistics.median(ratios), ratios, statistics.median(ta), statistics.median(tb)


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section ``key`` of docs/benchmarks.md, recording the command that produced it."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nEvery number here was measured by the command shown with it.\n"
    section = f"<!-- {key} -->\n## {title}\n\nCommand: `{command}`\n\n{body.strip()}\n<!-- /{key} -->\n"
    pattern = re.compile(rf"<!-- {re.escape(key)} -->.*?<!-- /{re.escape(key)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
