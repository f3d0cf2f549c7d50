"""`vlm report`: a run's self-contained HTML report."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vlm_jax.cli.common import inference_setup, non_negative_int


def register(commands: argparse._SubParsersAction) -> None:
    """Add `vlm report`."""
    report = commands.add_parser("report", help="a self-contained HTML report of a run")
    report.add_argument("--workdir", required=True)
    report.add_argument("--out", help="the HTML file (default WORKDIR/report.html)")
    report.add_argument("--explain", type=non_negative_int, default=3,
                        help="explanation heatmaps of this many test clips (0: none)")
    report.set_defaults(func=_report)


def _report(args) -> None:
    inference_setup()
    from vlm_jax.apps import explain, predictor, report
    model = predictor.Predictor.load(args.workdir) if args.explain else None  # shared with the examples
    with tempfile.TemporaryDirectory() as scratch:
        explanations = explain.report_explanations(model, args.explain, Path(scratch)) if args.explain else ()
        path = report.write_report(args.workdir, args.out, explanations=explanations, predictor=model)
    print(f"wrote {path}")
