"""What every command family of `vlm` shares: the parser that turns a bad flag into a one-line user error,
argument types, the config flags, and the setup of commands that load a trained run."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from vlm_jax.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line, as a user error."""

    def error(self, message: str):
        raise UserError(message if self.prog == "vlm" else f"{self.prog}: {message}")


def subcommands(parser: argparse.ArgumentParser, dest: str) -> argparse._SubParsersAction:
    """The required subcommands of `parser`, each parsed by `Parser`."""
    return parser.add_subparsers(dest=dest, required=True, parser_class=Parser)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (argparse reports a failure as a one-line user error)."""
    if not text.lstrip("+").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0 (a checkpoint step, a limit where 0 means none)."""
    if not text.lstrip("+").isdigit():
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return int(text)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0 (a frame rate where 0 means the file's own)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}")
    return value


def config_args(parser: argparse.ArgumentParser) -> None:
    """--config, and the `--config.KEY=VALUE` overrides that `parse_args` collects for this command."""
    parser.add_argument("--config", required=True, help="FILE[:preset], e.g. configs/pretrain.py:tiny")
    parser.set_defaults(overrides=[])


def compilation_cache() -> None:
    """Keep compiled XLA programs on disk ($VLM_COMPILATION_CACHE, default ~/.cache/vlm_jax/xla; "" turns it
    off): a resumed or repeated run skips its compiles (tens of seconds on CPU)."""
    import jax
    path = os.environ.get("VLM_COMPILATION_CACHE", os.path.expanduser("~/.cache/vlm_jax/xla"))
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def inference_setup() -> None:
    """Logging and the compile cache for commands that load a trained run."""
    compilation_cache()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def report_skipped(source) -> None:
    """Name on stderr each input file a command passed over, and why (stdout keeps the results only)."""
    for path, reason in source.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
