"""`vlm_jax.cli.data` as a user runs it: `vlm data show` on the session's tiny build."""

import json

from PIL import Image

from conftest import run_vlm


def test_show_writes_sheet_gif_and_stats(tiny_dataset, tmp_path):
    data_dir = tiny_dataset.parents[2]
    run_vlm("data", "show", "moving_shapes", "--data_dir", str(data_dir), "--out", str(tmp_path), "--num_clips", "4")
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["splits"]["train"]["total"] == 320
    assert Image.open(tmp_path / "contact_sheet.png").size[0] > 512
    gif = Image.open(tmp_path / "clips.gif")
    assert gif.n_frames == 16 and gif.info["loop"] == 0
