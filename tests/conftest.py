"""Shared fixtures: a tiny synthetic data set and a way to run the scripts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_script(script: str, *args, check: bool = True, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` from the repository root, capturing output."""
    full_env = dict(os.environ, PYTHONHASHSEED="0", **(env or {}))
    result = subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small synthetic data set in the challenge layout (shared, read-only).

    6 train and 2 test recordings of about 0.5 h each (about 60 epochs each),
    with EDF exports. Tests must not modify it: copy it first.
    """
    root = tmp_path_factory.mktemp("tiny") / "DATA"
    run_script(
        "make_synthetic.py", "--out", root, "--train-subjects", 6, "--test-subjects", 2,
        "--hours", 0.5, "--seed", 0, "--workers", 2, "--edf", "--quiet",
    )
    return root
