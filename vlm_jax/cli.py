"""The `vlm` command (also `python -m vlm_jax`).

Exit codes: 0 success, 2 a user error reported on one line, 1 an internal error.
Subcommands import their modules lazily, so `vlm --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from vlm_jax.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line, as a user error."""

    def error(self, message: str):
        raise UserError(message if self.prog == "vlm" else f"{self.prog}: {message}")


def _dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="moving_shapes or video_folder")
    parser.add_argument("--data_dir", required=True, help="where prepared data sets live")
    parser.add_argument("--size", default="tiny", help="moving_shapes size: tiny, small or default")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (moving_shapes), split seed (video_folder)")
    parser.add_argument("--num_frames", type=int, default=16, help="frames stored per clip")
    parser.add_argument("--image_size", type=int, default=64, help="stored resolution, 8 to 224")
    parser.add_argument("--source", help="video_folder: the folder of video files")
    parser.add_argument("--captions", help="video_folder: captions file (JSON or CSV); default SOURCE/captions.*")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="FILE[:preset], e.g. configs/pretrain.py:tiny")
    parser.set_defaults(overrides=[])


def _request(args):
    from vlm_jax.data import builders
    return builders.BuildRequest(name=args.name, data_dir=args.data_dir, size=args.size, seed=args.seed,
                                 num_frames=args.num_frames, image_size=args.image_size, source=args.source,
                                 captions=args.captions)


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
    from pathlib import Path

    from vlm_jax.data import builders, show
    stats = show.show(builders.dataset_dir(_request(args)), Path(args.out), num_clips=args.num_clips, split=args.split)
    print(json.dumps(stats, indent=2))
    print(f"wrote {args.out}/contact_sheet.png, clips.gif, audio.png, samples.md, stats.json")


def _models_summary(args) -> None:
    from vlm_jax import config as config_lib
    from vlm_jax.data import pipeline
    from vlm_jax.models import summary
    config = config_lib.load(args.config, args.overrides)
    print(summary.format_table(summary.summarize(config, pipeline.num_answers(config))))


def _init_distributed(args) -> None:
    """`jax.distributed.initialize` from the flags (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID), before anything else touches JAX; CPU collectives go through gloo."""
    if not args.coordinator:
        if args.num_processes not in (None, 1) or args.process_id not in (None, 0):
            raise UserError("--num_processes/--process_id need --coordinator HOST:PORT (or JAX_COORDINATOR_ADDRESS)")
        return
    if args.num_processes is None or args.process_id is None:
        raise UserError("--coordinator needs --num_processes and --process_id (or JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    if not 0 <= args.process_id < args.num_processes:
        raise UserError(f"--process_id {args.process_id} must be in [0, {args.num_processes})")
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id,
                               initialization_timeout=args.init_timeout)


def _compilation_cache() -> None:
    """Keep compiled XLA programs on disk ($VLM_COMPILATION_CACHE, default ~/.cache/vlm_jax/xla; "" turns it
    off): a resumed or repeated run skips its compiles (tens of seconds on CPU)."""
    import jax
    path = os.environ.get("VLM_COMPILATION_CACHE", os.path.expanduser("~/.cache/vlm_jax/xla"))
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def _train(args) -> None:
    from vlm_jax import config as config_lib
    config = config_lib.load(args.config, args.overrides)  # bad configs fail before any device is touched
    _init_distributed(args)
    _compilation_cache()
    from vlm_jax.eval import evaluators
    from vlm_jax.train import loop
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vlm_jax").setLevel(logging.INFO)
    # orbax warns at every periodic save that ranks checkpoints by a metric only evaluations provide
    logging.getLogger("absl").addFilter(lambda record: "did not provide metrics" not in record.getMessage())
    results = loop.train(config, args.workdir, evaluators=evaluators.evaluators_for(config))
    import jax
    if jax.process_index() == 0:
        print(evaluators.metrics_table(results))
        print(f"wrote {args.workdir}/results.json, metrics.jsonl, config.json, checkpoints/, tensorboard/")


def _bench(args) -> None:
    from vlm_jax import bench
    bench.run(quick=args.quick, out_dir=args.out, data_dir=args.data_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vlm", description="vlm_jax: video-language models in JAX")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = commands.add_parser("data", help="build and inspect data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    build = data_commands.add_parser("build", help="prepare a data set (TFDS, ArrayRecord)")
    _dataset_args(build)
    build.set_defaults(func=_data_build)
    show = data_commands.add_parser("show", help="statistics, samples, a contact sheet and a GIF")
    _dataset_args(show)
    show.add_argument("--out", required=True, help="output folder")
    show.add_argument("--split", default="train")
    show.add_argument("--num_clips", type=int, default=8)
    show.set_defaults(func=_data_show)

    models = commands.add_parser("models", help="inspect models")
    models_commands = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    summary = models_commands.add_parser("summary", help="parameters per module and forward FLOPs per clip")
    _config_args(summary)
    summary.set_defaults(func=_models_summary)

    train = commands.add_parser("train", help="pretrain or finetune (resumes from WORKDIR's latest checkpoint)")
    _config_args(train)
    train.add_argument("--workdir", required=True, help="run directory: config.json, metrics, checkpoints, results")
    train.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                       help="multi-host: HOST:PORT of process 0 (jax.distributed)")
    train.add_argument("--num_processes", type=int, default=_env_int("JAX_NUM_PROCESSES"))
    train.add_argument("--process_id", type=int, default=_env_int("JAX_PROCESS_ID"))
    train.add_argument("--init_timeout", type=int, default=300, help="seconds to wait for the other processes")
    train.set_defaults(func=_train)

    bench = commands.add_parser("bench", help="measure throughput side by side")
    bench.add_argument("--quick", action="store_true", help="seconds, for CI")
    bench.add_argument("--out", default="bench", help="where results.json and results.md go")
    bench.add_argument("--data_dir", help="prepared data sets (default $VLM_DATA_DIR or ./data)")
    bench.set_defaults(func=_bench)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse flags; `--config.KEY=VALUE` (or `--config.KEY VALUE`) overrides go to args.overrides."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overrides = []
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("--config.") or "overrides" not in args:
            parser.error(f"unrecognized arguments: {flag}")
        if "=" not in flag:
            if not rest:
                parser.error(f"{flag} needs a value")
            flag = f"{flag}={rest.pop(0)}"
        overrides.append(flag.removeprefix("--config."))
    args.overrides = overrides
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        args.func(args)
    except UserError as error:
        print(f"vlm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
