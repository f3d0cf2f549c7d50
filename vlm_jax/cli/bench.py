"""`vlm bench`: how fast, side by side with peers."""

from __future__ import annotations

import argparse

from vlm_jax.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm bench`."""
    bench = commands.add_parser("bench", help="measure throughput side by side")
    bench.add_argument("--quick", action="store_true", help="seconds, for CI")
    bench.add_argument("--out", default="bench", help="where results.json and results.md go")
    bench.add_argument("--data_dir", help="prepared data sets (default $VLM_DATA_DIR or ./data)")
    bench.add_argument("--sections", default="peak,input,train,mfu,scaling,memory,peers",
                       help="comma-separated sections to run, in their fixed order (default: all)")
    bench.set_defaults(func=_bench)


def _bench(args) -> None:
    from vlm_jax import bench
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(bench.SECTIONS))
    if unknown or not sections:
        raise UserError(f"--sections takes a comma-separated subset of {','.join(bench.SECTIONS)}, "
                        f"got {args.sections!r}")
    bench.run(quick=args.quick, out_dir=args.out, data_dir=args.data_dir, sections=sections)

