"""The `vlm` command (also `python -m vlm_jax`).

Exit codes: 0 success, 2 a user error reported on one line, 1 an internal error.
Each command family registers its own subcommands next to their handlers (`register(commands)` in
`data`, `models`, `train`, ...); handlers import their modules lazily, so `vlm --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from vlm_jax.cli import apps, bench, common, convert, data, kinetics, models, report, research, search, train
from vlm_jax.errors import TrainingFault, UserError

# In the order `vlm --help` lists the commands.
FAMILIES = (data, models, train, search, kinetics, apps, report, research, convert, bench)


def build_parser() -> argparse.ArgumentParser:
    """The whole `vlm` parser; each subcommand's `func` default is its handler."""
    parser = common.Parser(prog="vlm", description="vlm_jax: video-language models in JAX")
    commands = common.subcommands(parser, "command")
    for family in FAMILIES:
        family.register(commands)
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
    """Run `vlm ARGV`; returns the exit code (user errors and training faults are one line on stderr)."""
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
