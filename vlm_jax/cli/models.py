"""`vlm models summary`: a config's model, its parameters per module and forward FLOPs, without training."""

from __future__ import annotations

import argparse

from vlm_jax.cli.common import config_args, subcommands


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm models` and its subcommands."""
    models = commands.add_parser("models", help="inspect models")
    models_commands = subcommands(models, "models_command")
    summary = models_commands.add_parser("summary", help="parameters per module and forward FLOPs per clip")
    config_args(summary)
    summary.set_defaults(func=_models_summary)


def _models_summary(args) -> None:
    from vlm_jax import config as config_lib
    from vlm_jax.data import pipeline
    from vlm_jax.models import summary
    config = config_lib.load(args.config, args.overrides)
    print(summary.format_table(summary.summarize(config, pipeline.num_answers(config))))
