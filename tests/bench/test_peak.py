"""`vlm bench`'s peak section. Timings are never asserted (the machine is shared)."""

import math

from vlm_jax.bench import peak


def test_matmul_peak_reports_both_precisions():
    results = peak.matmul_peak(quick=True)
    assert set(results) == {"peak/f32_gflops", "peak/bf16_f32acc_gflops"}
    assert all(math.isfinite(v) and v > 0 for v in results.values()), results
