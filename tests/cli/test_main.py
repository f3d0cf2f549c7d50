"""`vlm_jax.cli` (main, parse_args) as a user runs it: exit codes, one-line errors, `--config.KEY` overrides,
the module and the console script."""

import pytest

from conftest import run_vlm


@pytest.mark.parametrize("args, message", [
    (["data", "build", "kinetics", "--data_dir", "/tmp/x"], "unknown data set 'kinetics'"),
    (["data", "build", "moving_shapes"], "the following arguments are required: --data_dir"),
    (["data", "build", "moving_shapes", "--data_dir", "/tmp/x", "--size", "huge"], "unknown size 'huge'"),
    (["data", "build", "moving_shapes", "--data_dir", "/tmp/x", "--seed", "abc"], "--seed: must be a non-negative integer"),
    (["data", "show", "moving_shapes", "--data_dir", "/nonexistent", "--out", "/tmp/x"], "no prepared data set"),
    (["fly"], "invalid choice"),
    (["bench", "--quick", "--sections", "peak,speed"], "--sections takes a comma-separated subset of"),
])
def test_user_errors_exit_2_with_one_line(args, message):
    result = run_vlm(*args, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlm: error:") and message in lines[0], result.stderr


def test_module_and_console_script_agree():
    assert "vlm_jax: video-language models" in run_vlm("--help").stdout


def test_config_overrides_on_the_command_line_are_checked():
    result = run_vlm("models", "summary", "--config", "configs/pretrain.py:tiny", "--config.model.video.nme=x",
                     check=False)
    assert result.returncode == 2 and "did you mean model.video.name" in result.stderr
    result = run_vlm("models", "summary", "--config", "configs/pretrain.py:tiny", "--bogus", check=False)
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr
