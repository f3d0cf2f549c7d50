"""`vlm research`: train every encoder / fusion / audio variant and tabulate them."""

from __future__ import annotations

import argparse

from vlm_jax.cli.common import positive_int


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm research`."""
    research = commands.add_parser("research", help="train every encoder / fusion / audio variant and tabulate "
                                                    "retrieval, QA per type and CIDEr")
    research.add_argument("--preset", default="small", help="tiny, cpu (a 2-core machine), small or base")
    research.add_argument("--out", required=True, help="runs go to OUT/<variant>/{pretrain,qa,caption}")
    research.add_argument("--variants", help="comma-separated subset (default all)")
    research.add_argument("--steps", type=positive_int, help="pretraining steps (finetuning: half); default the preset's")
    research.add_argument("--table", help="also write the markdown table here")
    research.set_defaults(func=_research, overrides=[])


def _research(args) -> None:
    from vlm_jax.apps import research
    variants = [v for v in args.variants.split(",") if v] if args.variants else None
    print(research.run(args.preset, args.out, variants, args.steps, args.overrides, args.table))
