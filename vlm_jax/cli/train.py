"""`vlm train` and `vlm eval`: the commands that run on every process of a (multi-host) job."""

from __future__ import annotations

import argparse
import logging
import os

from vlm_jax.cli.common import (compilation_cache, config_args, inference_setup, non_negative_int,
                                positive_int)
from vlm_jax.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm train` and `vlm eval`."""
    train = commands.add_parser("train", help="pretrain or finetune (resumes from WORKDIR's latest checkpoint)")
    config_args(train)
    train.add_argument("--workdir", required=True, help="run directory: config.json, metrics, checkpoints, results")
    _distributed_args(train)
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint; merges into its results.json")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", action="append", help="test, test_novel, validation (repeatable; default "
                                                           "the run's eval.splits)")
    evaluate.add_argument("--tasks", help="comma-separated: retrieval, qa, caption, recommend, explain (default: "
                                          "the run's task's, with its losses, as at the end of training)")
    evaluate.add_argument("--step", type=non_negative_int, help="checkpoint step (default the latest)")
    _distributed_args(evaluate)
    evaluate.set_defaults(func=_eval, overrides=[])


def _distributed_args(parser: argparse.ArgumentParser) -> None:
    """Multi-host flags; each defaults to its JAX_* environment variable, so a launcher can set them once."""
    parser.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                        help="multi-host: HOST:PORT of process 0 (jax.distributed)")
    parser.add_argument("--num_processes", type=positive_int, default=_env_int("JAX_NUM_PROCESSES"))
    parser.add_argument("--process_id", type=non_negative_int, default=_env_int("JAX_PROCESS_ID"))
    parser.add_argument("--init_timeout", type=positive_int, default=300, help="seconds to wait for the other processes")
    parser.add_argument("--heartbeat_timeout", type=positive_int, default=100,
                        help="seconds without a heartbeat before a process counts as dead and every other one stops")


def _env_int(name: str) -> int | None:
    """The integer in environment variable `name` (None when unset); anything else is a user error."""
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


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


def _train(args) -> None:
    from vlm_jax import config as config_lib
    config = config_lib.load(args.config, args.overrides)  # bad configs fail before any device is touched
    _init_distributed(args)
    compilation_cache()
    from vlm_jax.apps import run_files
    from vlm_jax.eval import evaluators
    from vlm_jax.run import loop
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vlm_jax").setLevel(logging.INFO)
    # orbax warns at every periodic save that ranks checkpoints by a metric only evaluations provide
    logging.getLogger("absl").addFilter(lambda record: "did not provide metrics" not in record.getMessage())
    results = loop.train(config, args.workdir, evaluators=evaluators.evaluators_for(config))
    import jax
    if jax.process_index() == 0:
        print(run_files.metrics_table(results))
        print(f"wrote {args.workdir}/results.json, metrics.jsonl, config.json, checkpoints/, tensorboard/")


def _eval(args) -> None:
    _init_distributed(args)
    inference_setup()
    from vlm_jax.apps import run_files
    from vlm_jax.eval import runner
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    results = runner.evaluate(args.workdir, args.split or None, tasks, args.step, args.overrides)
    import jax
    if jax.process_index() == 0:
        print(run_files.metrics_table(results))
        print(f"merged into {args.workdir}/results.json")
