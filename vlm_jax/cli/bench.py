"""`vlm bench` (how fast, side by side with peers) and `vlm profile` (why: where one workload's time goes)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vlm_jax.cli.common import positive_int
from vlm_jax.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm bench` and `vlm profile`."""
    bench = commands.add_parser("bench", help="measure throughput side by side")
    bench.add_argument("--quick", action="store_true", help="seconds, for CI")
    bench.add_argument("--out", default="bench", help="where results.json and results.md go")
    bench.add_argument("--data_dir", help="prepared data sets (default $VLM_DATA_DIR or ./data)")
    bench.add_argument("--sections", help="comma-separated sections to run, in their fixed order (default: all)")
    bench.add_argument("--presets", help="comma-separated presets for the compile, train and mfu sections "
                                         "(default: each section's own)")
    bench.set_defaults(func=_bench)

    profile = commands.add_parser("profile", help="where our side of a `vlm bench` peer spends its time: a "
                                                  "jax.profiler trace, summed by operation kind and source")
    profile.add_argument("workload", help="a peer's workload at full size (vivit_train, timesformer_train, "
                                          "i3d_forward, minilm_encode) or pretrain (the small preset's step)")
    profile.add_argument("--calls", type=positive_int, default=3, help="calls traced (default 3)")
    profile.add_argument("--trace_dir", help="where the trace stays, for TensorBoard or Perfetto (default a new "
                                             "temporary folder)")
    profile.set_defaults(func=_profile)


def _bench(args) -> None:
    from vlm_jax import bench, schema
    sections = _subset("--sections", args.sections, bench.SECTIONS) if args.sections is not None else bench.SECTIONS
    presets = _subset("--presets", args.presets, tuple(schema.PRESETS)) if args.presets is not None else None
    bench.run(quick=args.quick, out_dir=args.out, data_dir=args.data_dir, sections=sections, presets=presets)


def _subset(flag: str, text: str, choices: tuple[str, ...]) -> list[str]:
    """`text`'s comma-separated names, each one of `choices`; a UserError otherwise."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or set(names) - set(choices):
        raise UserError(f"{flag} takes a comma-separated subset of {','.join(choices)}, got {text!r}")
    return names


def _profile(args) -> None:
    from vlm_jax.bench import profile as bench_profile
    if args.workload not in bench_profile.WORKLOADS:
        raise UserError(f"unknown workload {args.workload!r}; choose one of {', '.join(bench_profile.WORKLOADS)}")
    trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix=f"vlm_profile_{args.workload}_"))
    print(bench_profile.profile(args.workload, args.calls, trace_dir))
