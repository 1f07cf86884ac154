"""Shared helpers for benchmark scripts: timing medians and writing sections of docs/benchmarks.md."""

from __future__ import annotations

import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


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


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section ``key`` of docs/benchmarks.md, recording the command that produced it."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nEvery number here was measured by the command shown with it.\n"
    section = f"<!-- {key} -->\n## {title}\n\nCommand: `{command}`\n\n{body.strip()}\n<!-- /{key} -->\n"
    pattern = re.compile(rf"<!-- {re.escape(key)} -->.*?<!-- /{re.escape(key)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
