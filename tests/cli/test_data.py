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


def test_each_data_sets_flags_reach_its_build_request():
    """The flags come from the registry; every one lands in the BuildRequest field of its name."""
    from vlm_jax.cli import build_parser
    from vlm_jax.cli.data import _request
    args = build_parser().parse_args(["data", "build", "video_folder", "--data_dir", "/d", "--source", "/clips",
                                      "--captions", "/c.json", "--num_frames", "8"])
    request = _request(args)
    assert (request.name, request.data_dir, request.source, request.captions, request.num_frames) == (
        "video_folder", "/d", "/clips", "/c.json", 8)
    args = build_parser().parse_args(["data", "show", "moving_shapes", "--data_dir", "/d", "--out", "/o",
                                      "--size", "small", "--shape_scale", "1.5", "--max_objects", "2"])
    request = _request(args)
    assert (request.size, request.shape_scale, request.max_objects, request.source) == ("small", 1.5, 2, None)
