"""`vlm search index` and `vlm search query`: text-to-video search over an index of embedded videos."""

from __future__ import annotations

import argparse
import json

from vlm_jax.cli.common import inference_setup, non_negative_int, positive_int, subcommands
from vlm_jax.cli.kinetics import FRAME_CHOICE, add_frame_choice, frame_choice
from vlm_jax.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm search` and its subcommands."""
    search = commands.add_parser("search", help="text-to-video search over an index of embedded videos")
    search_commands = subcommands(search, "search_command")
    index = search_commands.add_parser("index", help="embed videos into an index (creates or appends)")
    index.add_argument("--encoder", choices=("run", "kinetics_bridge"), default="run",
                       help="run: a trained run's model (--workdir); kinetics_bridge: zero-shot, Kinetics-400 I3D "
                            "class probabilities bridged into MiniLM text space (real videos only)")
    index.add_argument("--workdir", help="the trained run whose model embeds the videos (--encoder run)")
    index.add_argument("--source", required=True, nargs="+", help="a split of the run's data set, or video files "
                                                                  "and folders")
    index.add_argument("--out", required=True, help="index directory")
    index.add_argument("--step", type=non_negative_int, help="checkpoint step (default the latest)")
    index.add_argument("--limit", type=non_negative_int, default=0, help="at most this many clips of a split (0: all)")
    add_frame_choice(index)
    index.set_defaults(func=_search_index)
    query = search_commands.add_parser("query", help="the videos closest to a text")
    query.add_argument("--index", required=True)
    query.add_argument("text")
    query.add_argument("-k", type=positive_int, default=10)
    query.add_argument("--approximate", action="store_true",
                       help="approximate top-k: faiss's inverted file on a CPU (calibrated for recall@10 >= 0.95 "
                            "when first used), jax.lax.approx_max_k on an accelerator")
    query.add_argument("--nprobe", type=positive_int, help="with --approximate: the inverted file's cells each "
                                                           "query visits (default the calibrated number)")
    query.add_argument("--sheet", help="write a contact sheet of the hits (PNG)")
    query.add_argument("--json", action="store_true", help="print the hits as JSON")
    query.set_defaults(func=_search_query)


def _search_index(args) -> None:
    inference_setup()
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
        embedder = kinetics.KineticsBridge(frame_choice(args))
    sources = args.source[0] if len(args.source) == 1 else args.source
    print(json.dumps(search.build_index(embedder, sources, args.out, limit=args.limit), indent=2))


def _search_query(args) -> None:
    inference_setup()
    from vlm_jax.apps import search
    searcher = search.Searcher(args.index)
    if args.nprobe is not None and not args.approximate:
        raise UserError("--nprobe needs --approximate")
    hits = searcher.query(args.text, args.k, approximate=args.approximate, nprobe=args.nprobe)
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
