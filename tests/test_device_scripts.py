"""scripts/fetch_gpu_wheels.sh and scripts/device_check.sh (issue 7): they parse, device_check.sh refuses a
machine without a GPU in one line before it installs or writes anything, and the wheels' folder .whl/ is
git-ignored. What they do on the GPU machine itself is checked there, not here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = [REPO / "scripts" / "fetch_gpu_wheels.sh", REPO / "scripts" / "device_check.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_is_executable(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_device_check_stops_without_a_gpu(tmp_path):
    import jax

    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU: device_check.sh would run the bench")
    # Our Python first on PATH, as on the GPU machine its python3 is the one with JAX.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TMPDIR": str(tmp_path / "tmp"), "OUT": str(tmp_path / "out")}
    env.pop("PYTHON", None)
    (tmp_path / "tmp").mkdir()
    result = subprocess.run(["bash", str(SCRIPTS[1])], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=120)
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(output) == 1 and "not gpu" in output[0], output
    # It stopped at the backend check: no throwaway install folder, no results folder.
    assert not any((tmp_path / "tmp").iterdir())
    assert not (tmp_path / "out").exists()


def test_wheels_folder_is_git_ignored():
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=REPO, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    for path in (".whl/", ".whl/grain-0.2.18-cp312-cp312-manylinux_2_28_x86_64.whl"):
        result = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, f"{path} is not git-ignored (add .whl/ to .gitignore): {result.stderr}"
