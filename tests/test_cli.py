"""The `vlm` command as a user runs it: exit codes, one-line errors, data build and show."""

import json

import pytest
from PIL import Image

from conftest import run_vlm


@pytest.mark.parametrize("args, message", [
    (["data", "build", "kinetics", "--data_dir", "/tmp/x"], "unknown data set 'kinetics'"),
    (["data", "build", "moving_shapes"], "the following arguments are required: --data_dir"),
    (["data", "build", "moving_shapes", "--data_dir", "/tmp/x", "--size", "huge"], "unknown size 'huge'"),
    (["data", "build", "moving_shapes", "--data_dir", "/tmp/x", "--seed", "abc"], "invalid int value"),
    (["data", "show", "moving_shapes", "--data_dir", "/nonexistent", "--out", "/tmp/x"], "no prepared data set"),
    (["fly"], "invalid choice"),
])
def test_user_errors_exit_2_with_one_line(args, message):
    result = run_vlm(*args, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlm: error:") and message in lines[0], result.stderr


def test_show_writes_sheet_gif_and_stats(tiny_dataset, tmp_path):
    data_dir = tiny_dataset.parents[2]
    run_vlm("data", "show", "moving_shapes", "--data_dir", str(data_dir), "--out", str(tmp_path), "--num_clips", "4")
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["splits"]["train"]["total"] == 320
    assert Image.open(tmp_path / "contact_sheet.png").size[0] > 512
    gif = Image.open(tmp_path / "clips.gif")
    assert gif.n_frames == 16 and gif.info["loop"] == 0


def test_module_and_console_script_agree():
    assert "vlm_jax: video-language models" in run_vlm("--help").stdout
