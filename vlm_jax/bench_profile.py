"""Where our side of a `vlm bench` peer spends its time: a `jax.profiler` trace of a few calls, its XLA
operations summed by kind. `vlm bench` says how fast; this says why.

    python -m vlm_jax.bench_profile vivit_train|timesformer_train|i3d_forward [--calls 3] [--trace-dir DIR]

The workloads are the peers' own (`bench_peers`, full sizes). It prints, per call, the time of each kind of
operation (the HLO instruction name's prefix: `dot`, `convolution`, `fusion`, `ynn_fusion` (a matmul fused
with its neighbours), `while` (the grouped attention of `layers.attend` on CPU is a `lax.map`, hence a while
loop, whose body's operations also appear by name), ...) and the slowest instructions. The trace
stays in DIR for TensorBoard or Perfetto.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

WORKLOADS = ("vivit_train", "timesformer_train", "i3d_forward")


def our_call(workload: str) -> Callable[[], Any]:
    """Our side of the peer `workload`, warmed up (compiled and run once)."""
    from vlm_jax import bench_peers as peers
    from vlm_jax.models.video.vivit import ViViT

    sizes = peers.VIVIT_SIZES[False]
    if workload == "i3d_forward":
        from vlm_jax.convert import i3d as i3d_convert
        from vlm_jax.models.video.i3d import I3D

        model = I3D()
        variables = i3d_convert.load_i3d_kinetics(model)
        forward = jax.jit(lambda v, x: model.apply(v, x, method=I3D.logits))
        video = jnp.asarray(peers._clips((1, 16, 224, 224, 3))[0])
        call = lambda: jax.block_until_ready(forward(variables, video))  # noqa: E731
    else:
        variant, tubelet, batch = (("joint", 2, sizes["batch"]) if workload == "vivit_train"
                                   else ("factorised_self_attention", 1, peers.TIMESFORMER_BATCH))
        model = ViViT(variant=variant, pool="cls", width=sizes["hidden"], depth=sizes["layers"],
                      num_heads=sizes["heads"], mlp_dim=sizes["mlp"], tubelet=(tubelet, sizes["patch"], sizes["patch"]))
        video, labels = peers._clips((batch, sizes["frames"], sizes["image"], sizes["image"], 3))
        params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(video[:1]))["params"]
        call, _ = peers._our_train_step(model, params, video, labels)
    call()
    return call


def operation_times(trace_dir: Path) -> collections.Counter:
    """Microseconds per HLO operation, summed over the trace's events that carry one (XLA's thunks; the
    runtime's own events, Python's and the compiler's carry none)."""
    trace_file = sorted(trace_dir.rglob("*.trace.json.gz"))[-1]
    trace = json.load(gzip.open(trace_file))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals: collections.Counter = collections.Counter()
    for event in events:
        operation = (event.get("args") or {}).get("hlo_op")
        if event.get("ph") == "X" and operation:
            totals[operation] += event.get("dur", 0)
    return totals


def kind(name: str) -> str:
    return re.split(r"[.\d]", name, maxsplit=1)[0] or name


def profile(workload: str, calls: int, trace_dir: Path) -> str:
    call = our_call(workload)
    jax.profiler.start_trace(str(trace_dir))
    for _ in range(calls):
        call()
    jax.profiler.stop_trace()
    totals = operation_times(trace_dir)
    by_kind: collections.Counter = collections.Counter()
    for name, micros in totals.items():
        by_kind[kind(name)] += micros
    total = sum(by_kind.values())
    lines = [f"{workload}: {total / calls / 1e3:.1f} ms of operations per call ({calls} calls, trace in {trace_dir})",
             "", "| kind | ms per call | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v / calls / 1e3:.1f} | {100 * v / total:.1f}% |" for k, v in by_kind.most_common(12)]
    lines += ["", "| slowest operations | ms per call | share |", "|---|---:|---:|"]
    lines += [f"| {n[:80]} | {v / calls / 1e3:.1f} | {100 * v / total:.1f}% |" for n, v in totals.most_common(10)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.bench_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--trace-dir", default="")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    trace_dir = Path(args.trace_dir or tempfile.mkdtemp(prefix=f"vlm_profile_{args.workload}_"))
    print(profile(args.workload, args.calls, trace_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
