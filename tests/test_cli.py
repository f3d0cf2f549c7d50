"""The `vlm` command as a user runs it: exit codes, one-line errors, data build and show."""

import json

import pytest
from PIL import Image

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


def test_models_summary_counts_parameters_and_flops():
    result = run_vlm("models", "summary", "--config", "configs/pretrain.py:tiny", "--config.model.video.name=cnn2d",
                     "--config.model.audio.name", "None")
    lines = result.stdout.splitlines()
    assert lines[0] == "video=cnn2d, text=bert, audio=None, fusion=cross_attention"
    counts = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in lines[3:] if line[:1].isalpha()
              and len(line.split()) >= 2 and line.split()[1].replace(",", "").isdigit()}
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert "audio_encoder" not in counts and counts["video_encoder"] == 26_128
    flops = {line.rsplit(None, 1)[0].strip(): float(line.rsplit(None, 1)[1]) for line in lines
             if line.startswith("  ")}
    assert 0 < flops["video tower"] < flops["whole model (every head)"]


def test_config_overrides_on_the_command_line_are_checked():
    result = run_vlm("models", "summary", "--config", "configs/pretrain.py:tiny", "--config.model.video.nme=x",
                     check=False)
    assert result.returncode == 2 and "did you mean model.video.name" in result.stderr
    result = run_vlm("models", "summary", "--config", "configs/pretrain.py:tiny", "--bogus", check=False)
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr
