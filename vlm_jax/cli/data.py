"""`vlm data build` and `vlm data show`: prepare a data set, and look at one."""

from __future__ import annotations

import argparse
import dataclasses
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
    """The flags that name a data set; build and show take the same, so show finds what build wrote.
    Each data set's own flags come from its registry entry, with `BuildRequest`'s defaults."""
    from vlm_jax.data import features, registry
    defaults = {field.name: field.default for field in dataclasses.fields(features.BuildRequest)}
    parser.add_argument("name", help=registry.CHOICES)
    parser.add_argument("--data_dir", required=True, help="where prepared data sets live")
    parser.add_argument("--seed", type=non_negative_int, default=defaults["seed"],
                        help="generation seed (moving_shapes), split seed (video_folder)")
    parser.add_argument("--num_frames", type=int, default=defaults["num_frames"], help="frames stored per clip")
    parser.add_argument("--image_size", type=int, default=defaults["image_size"], help="stored resolution, 8 to 224")
    for name, data_set in registry.DATASETS.items():
        for flag in data_set.flags:
            parser.add_argument(f"--{flag.field}", type=flag.type, default=defaults[flag.field],
                                help=f"{name}: {flag.help}")


def _request(args):
    from vlm_jax.data import features
    return features.BuildRequest(**{field.name: getattr(args, field.name)
                                    for field in dataclasses.fields(features.BuildRequest)})


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
