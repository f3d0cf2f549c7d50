"""`vlm classify`: Kinetics-400 actions of real videos, and the frame flags it shares with
`vlm search index --encoder kinetics_bridge`."""

from __future__ import annotations

import argparse

from vlm_jax.cli.common import inference_setup, non_negative_float, positive_int, report_skipped

FRAME_CHOICE = ("num_frames", "sampling", "fps")


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm classify`."""
    classify = commands.add_parser("classify", help="zero-shot Kinetics-400 actions of real videos (pretrained I3D)")
    classify.add_argument("videos", nargs="+", help="video files or folders")
    classify.add_argument("-k", type=positive_int, default=5)
    add_frame_choice(classify)
    classify.set_defaults(func=_classify)


def add_frame_choice(parser: argparse.ArgumentParser) -> None:
    """How a real video becomes I3D's input; the labels depend on it (see `pretrained.read_clip`). Unset
    flags stay None and take `kinetics.FrameChoice`'s defaults."""
    parser.add_argument("--num_frames", type=positive_int, help="frames per clip (default 64; I3D: at least 8)")
    parser.add_argument("--sampling", choices=("first", "uniform"),
                        help="first (default): the first frames in a row (DeepMind's I3D evaluation); uniform: "
                             "spread over the whole video")
    parser.add_argument("--fps", type=non_negative_float,
                        help="resample to this frame rate first (default 25, Kinetics'; 0 keeps the file's rate)")


def frame_choice(args):
    """The flags of `add_frame_choice`, defaults filled in; --fps 0 keeps the file's rate."""
    from vlm_jax.apps import kinetics
    given = {name: getattr(args, name) for name in FRAME_CHOICE if getattr(args, name) is not None}
    if given.get("fps") == 0:
        given["fps"] = None
    return kinetics.FrameChoice(**given)


def _classify(args) -> None:
    inference_setup()
    from vlm_jax.apps import kinetics
    frames = frame_choice(args)
    results, source = kinetics.classify(args.videos, frames, args.k)
    print(f"Kinetics-400 I3D, top {args.k}; frames: {frames.num_frames} x 224 px, sampling {frames.sampling}, "
          f"fps {frames.fps or 'as stored'}")
    for result in results:
        labels = ", ".join(f"{label} {probability:.3f}" for label, probability in result["top"])
        print(f"{result['id']}: {labels}")
    report_skipped(source)
