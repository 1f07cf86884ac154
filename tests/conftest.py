"""Shared test fixtures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _shared_dir() -> Path:
    env = os.environ.get("SYNOPT_SHARED")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root with the project's real datasets, materialized once per session from ../shared/data.

    Skips the test when the shared folder is not there (set SYNOPT_SHARED to point at it elsewhere).
    """
    script = _shared_dir() / "data" / "materialize.py"
    if not script.is_file():
        pytest.skip(f"real data not available: {script} is missing (set SYNOPT_SHARED)")
    root = tmp_path_factory.mktemp("data_root")
    proc = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"{script} {root} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return root
