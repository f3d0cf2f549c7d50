"""`vlm data build` and `vlm data show`: prepare a data set, and look at one."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vlm_jax.cli.common import non_negative_int, positive_int, subcommands


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm data` and its subcommands."""
    data = commands.add_parser("data", help="build and inspect data sets")
    data_commands = subcommands(data, "data_command")
    build = data_commands.add_parser("build", help="prepare a data set (TFDS, ArrayRecord)")
    _dataset_args(build)
    build.set_defaults(func=_data_build)
    show = data_commands.add_parser("show", help="statistics, samples, a contact sheet and a GIF")
    _dataset_args(show)
    show.add_argument("--out", required=True, help="output folder")
    show.add_argument("--split", default="train")
    show.add_argument("--num_clips", type=positive_int, default=8)
    show.set_defaults(func=_data_show)


def _dataset_args(parser: argparse.ArgumentParser) -> None:
    """The flags that name a data set; build and show take the same, so show finds what build wrote."""
    parser.add_argument("name", help="moving_shapes or video_folder")
    parser.add_argument("--data_dir", required=True, help="where prepared data sets live")
    parser.add_argument("--size", default="tiny", help="moving_shapes size: tiny, small or default")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="generation seed (moving_shapes), split seed (video_folder)")
    parser.add_argument("--num_frames", type=int, default=16, help="frames stored per clip")
    parser.add_argument("--image_size", type=int, default=64, help="stored resolution, 8 to 224")
    parser.add_argument("--shape_scale", type=float, default=1.0,
                        help="moving_shapes: draw every shape this many times larger (0.25 to 2; for low resolutions)")
    parser.add_argument("--max_objects", type=int, default=3, help="moving_shapes: at most this many objects per clip")
    parser.add_argument("--source", help="video_folder: the folder of video files")
    parser.add_argument("--captions", help="video_folder: captions file (JSON or CSV); default SOURCE/captions.*")


def _request(args):
    from vlm_jax.data import features
    return features.BuildRequest(name=args.name, data_dir=args.data_dir, size=args.size, seed=args.seed,
                                 num_frames=args.num_frames, image_size=args.image_size, source=args.source,
                                 captions=args.captions, shape_scale=args.shape_scale, max_objects=args.max_objects)


def _data_build(args) -> None:
    from vlm_jax.data import builders
    start = time.perf_counter()
    path = builders.build(_request(args))
    seconds = time.perf_counter() - start
    info = builders.open_dataset(path).info
    clips = sum(split.num_examples for split in info.splits.values())
    disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(json.dumps({"path": str(path), "splits": {k: v.num_examples for k, v in info.splits.items()},
                      "seconds": round(seconds, 2), "clips_per_s": round(clips / max(seconds, 1e-9), 1),
                      "disk_mb": round(disk / 2**20, 1)}, indent=2))


def _data_show(args) -> None:
    from vlm_jax.data import builders, show
    stats = show.show(builders.dataset_dir(_request(args)), Path(args.out), num_clips=args.num_clips, split=args.split)
    print(json.dumps(stats, indent=2))
    print(f"wrote {args.out}/contact_sheet.png, clips.gif, audio.png, samples.md, stats.json")
