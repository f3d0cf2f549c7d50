"""Where our side of a `vlm bench` peer spends its time: a `jax.profiler` trace of a few calls, its XLA
operations summed by kind and by source in the model. `vlm bench` says how fast; this says why.

The workloads (`WORKLOADS`) are the peers' own (`peers`, full sizes), and `pretrain`: the small preset's
pretraining step of the train section (from ./data, built when missing). The report gives the time per call
of the operations by kind (the HLO instruction name's prefix: `dot`, `convolution`, `ynn_fusion` (a matmul
fused with its neighbours), `while` (the grouped attention of `layers.attend` on CPU is a `lax.map`), ...), by
source in the model (`sources`: e.g. `backward transformer/layer_*/attention`), and the slowest operations.
The trace stays in its folder for TensorBoard or Perfetto.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vlm_jax import pretrained
from vlm_jax.bench import peers
from vlm_jax.bench.presets import load_config
from vlm_jax.convert import i3d as i3d_convert
from vlm_jax.data import pipeline
from vlm_jax.models.video.i3d import I3D
from vlm_jax.run import build

WORKLOADS = ("vivit_train", "timesformer_train", "i3d_forward", "minilm_encode", "pretrain")


def our_call(workload: str) -> Callable[[], Any]:
    """Our side of the peer `workload`, warmed up (compiled and run once)."""
    sizes = peers.VIVIT_SIZES[False]
    if workload == "pretrain":
        call = _pretrain_call()
    elif workload == "minilm_encode":
        encoder, texts = pretrained.load_text_encoder(pretrained.MINILM), peers.sentences(640)

        def call():
            return encoder.encode(texts, batch_size=64)  # tokenising included, as in the peer; no compiled_text
    elif workload == "i3d_forward":
        model = I3D()
        variables = i3d_convert.load_i3d_kinetics(model)
        forward = jax.jit(lambda v, x: model.apply(v, x, method=I3D.logits))
        video = jnp.asarray(peers.clips((1, 16, 224, 224, 3))[0])

        def call():
            return jax.block_until_ready(forward(variables, video))

        call.compiled_text = lambda: forward.lower(variables, video).compile().as_text()
    else:
        variant, time_patch, batch = (("joint", 2, sizes["batch"]) if workload == "vivit_train"
                                      else ("factorised_self_attention", 1, peers.TIMESFORMER_BATCH))
        model = peers.our_vivit(sizes, variant, time_patch)
        video, labels = peers.clips((batch, sizes["frames"], sizes["image"], sizes["image"], 3))
        params = jax.jit(model.init)(jax.random.key(0), jnp.asarray(video[:1]))["params"]
        call, _ = peers.our_train_call(model, params, video, labels)
    call()
    return call


def _pretrain_call() -> Callable[[], Any]:
    """The small preset's pretraining step (`vlm bench`'s train section) on one real batch."""
    config = load_config("small", "data")
    build.ensure_data(config)
    run = build.Run(config)
    batch = run.to_device(next(iter(pipeline.train_dataset(run.spec))))
    holder = {"state": run.factory.create()}

    def call():
        with run.mesh_context():
            holder["state"], metrics = run.train_step(holder["state"], batch)
        return jax.block_until_ready(metrics)

    def compiled_text():
        with run.mesh_context():
            return run.train_step.lower(holder["state"], batch).compile().as_text()

    call.compiled_text = compiled_text
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


def sources(compiled_text: str) -> dict[str, str]:
    """Each HLO operation's source in the model: its `op_name` metadata with the transformations unwrapped
    and layer numbers folded (`backward transformer/layer_*/attention/query`); "forward"/"backward" by
    whether autodiff transposed it; top-level code (the optimizer, the loss) is `step`."""
    named = {}
    for match in re.finditer(r'%([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"', compiled_text):
        path = re.sub(r"^jit\([^)]*\)/?", "", match.group(2))
        direction = "backward" if "transpose(" in path else "forward"
        while re.search(r"\w+\(([^()]*)\)", path):
            path = re.sub(r"\w+\(([^()]*)\)", r"\1", path)  # jvp(ViViT) -> ViViT
        parts = [re.sub(r"_\d+$", "_*", part) for part in path.split("/")[:-1] if part]  # drop the primitive
        named[match.group(1)] = f"{direction} {'/'.join(parts[1:5]) or 'step'}" if parts else "step"
    return named


def profile(workload: str, calls: int, trace_dir: str | os.PathLike | None) -> str:
    """The report on `calls` traced calls of `workload` (one of `WORKLOADS`), as markdown tables. The trace
    goes to `trace_dir`, or to a new temporary folder when it is None or empty."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    trace_dir = Path(trace_dir or tempfile.mkdtemp(prefix=f"vlm_profile_{workload}_"))
    call = our_call(workload)
    jax.profiler.start_trace(str(trace_dir))
    start = time.perf_counter()
    for _ in range(calls):
        call()
    wall_ms = (time.perf_counter() - start) / calls * 1e3
    jax.profiler.stop_trace()
    totals = operation_times(trace_dir)
    named = sources(call.compiled_text()) if hasattr(call, "compiled_text") else {}
    return _report(workload, calls, trace_dir, wall_ms, totals, named)


def _report(workload: str, calls: int, trace_dir: Path, wall_ms: float, totals: collections.Counter,
            named: dict[str, str]) -> str:
    by_kind: collections.Counter = collections.Counter()
    by_source: collections.Counter = collections.Counter()
    for name, micros in totals.items():
        by_kind[kind(name)] += micros
        by_source[named.get(name, "(unnamed)")] += micros
    total = sum(by_kind.values())

    def table(header: str, rows: list[tuple[str, float]]) -> list[str]:
        return ["", f"| {header} | ms per call | share |", "|---|---:|---:|",
                *(f"| {k} | {v / calls / 1e3:.1f} | {100 * v / total:.1f}% |" for k, v in rows)]

    lines = [f"{workload}: {wall_ms:.0f} ms per call; its traced operations sum to {total / calls / 1e3:.0f} ms "
             f"({calls} calls, trace in {trace_dir}). Operations on the thread pool overlap, so the sum can exceed "
             "the wall time; work XLA's CPU runtime hands to the pool untraced shows only as waiting for completion.",
             *table("kind", by_kind.most_common(12))]
    if named:
        lines += table("source", by_source.most_common(16))
    lines += table("slowest operations", [(n[:80], v) for n, v in totals.most_common(10)])
    return "\n".join(lines)
