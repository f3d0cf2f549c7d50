"""Shared fixtures. The tiny moving_shapes set is built once per session, through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Test shapes are tiny, so XLA's compile time dominates; its backend optimisations are not worth it here.
# Set before anything imports jax (pytest imports this file first).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

REPO = Path(__file__).resolve().parent.parent


def run_vlm(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m vlm_jax ARGS` as a user would."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "vlm_jax", *args], capture_output=True, text=True, env=env,
                            timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"vlm {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The real `tiny` moving_shapes build (576 clips, 16 frames at 64 px)."""
    data_dir = tmp_path_factory.mktemp("data")
    result = run_vlm("data", "build", "moving_shapes", "--data_dir", str(data_dir), "--size", "tiny")
    return Path(json.loads(result.stdout[result.stdout.index("\n{") + 1:])["path"])
