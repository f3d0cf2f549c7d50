"""A training step's FLOPs, counted from its jaxpr and by XLA, and the share of the matmul peak it turns into
model FLOPs (MFU): the arithmetic of the train and mfu sections."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.extend as jex
import numpy as np

# Dense bfloat16 tensor-core peak (TFLOP/s, without sparsity) by `jax.devices()[0].device_kind` substring.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def count_flops(jaxpr: Any) -> float:
    """Matmul + convolution FLOPs of a (closed) jaxpr, sub-jaxprs included (scan bodies x their length,
    the costlier branch of a cond, a while body once: its trip count is not static)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
            per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
        subs, branches = _sub_jaxprs(eqn)
        inner = sum(count_flops(sub) for sub in subs)
        if branches:
            inner += max(count_flops(branch) for branch in branches)
        total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def count_equations(jaxpr: Any) -> int:
    """Equations of a (closed) jaxpr, those of its sub-jaxprs (jit, scan and cond bodies) counted once each in
    place of the equation that holds them: the size of the program XLA is given to compile."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        subs, branches = _sub_jaxprs(eqn)
        total += sum(count_equations(sub) for sub in subs + branches) if subs or branches else 1
    return total


def _sub_jaxprs(eqn: Any) -> tuple[list[Any], list[Any]]:
    """(the jaxprs an equation holds directly, those it holds as a tuple of branches)."""
    kinds = (jex.core.ClosedJaxpr, jex.core.Jaxpr)
    subs = [v for v in eqn.params.values() if isinstance(v, kinds)]
    branches = [v for value in eqn.params.values() if isinstance(value, tuple) for v in value if isinstance(v, kinds)]
    return subs, branches


def datasheet_tflops(device_kind: str) -> float | None:
    for kind, tflops in DATASHEET_BF16_TFLOPS.items():
        if kind.lower() in device_kind.lower():
            return tflops
    return None


def xla_flops(compiled: Any) -> float:
    """XLA's FLOP count of a compiled executable (`cost_analysis`), NaN when the backend gives none."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
    return float((cost or {}).get("flops", float("nan")))


def peak_tflops(peaks: dict[str, float], dtype: str) -> float:
    """This run's measured matmul peak for a compute dtype, TFLOP/s."""
    return peaks.get({"float32": "peak/f32_gflops", "bfloat16": "peak/bf16_f32acc_gflops"}[dtype], np.nan) / 1e3


def flops_metrics(key: str, analytic: float, xla: float, step_s: float, dtype: str,
                  peaks: dict[str, float]) -> dict[str, float]:
    """The FLOP and MFU metrics of one measured step, under `key`."""
    tflops = analytic / step_s / 1e12
    results = {f"{key}/analytic_gflop": analytic / 1e9, f"{key}/xla_gflop": xla / 1e9,
               f"{key}/xla_over_analytic": xla / analytic, f"{key}/tflops": tflops,
               f"{key}/mfu": 100.0 * tflops / peak_tflops(peaks, dtype)}
    datasheet = datasheet_tflops(jax.devices()[0].device_kind) if jax.default_backend() == "gpu" else None
    if datasheet:
        results[f"{key}/mfu_datasheet"] = 100.0 * tflops / datasheet
    return results
