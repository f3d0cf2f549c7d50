"""`vlm bench`'s scaling section: the exponent fit, and a reduced quick run for structure. Timings are never
asserted (the machine is shared); the full section runs in `vlm bench` itself."""

import math

import numpy as np
import pytest

from vlm_jax.bench import scaling


@pytest.mark.parametrize("scale, exponent", [(3.0, 1.0), (1.0, 2.0), (0.5, 0.5), (7.0, 1.15), (2.0, 0.0)])
def test_fit_exponent_recovers_power_laws(scale, exponent):
    xs = [16, 32, 64]
    assert scaling.fit_exponent(xs, [scale * x**exponent for x in xs]) == pytest.approx(exponent, abs=1e-9)


def test_fit_exponent_is_the_least_squares_slope_on_logs():
    xs, ys = [4, 8, 16, 32], [1.0, 2.5, 3.0, 9.0]
    slope = np.polyfit(np.log(xs), np.log(ys), 1)[0]
    assert scaling.fit_exponent(xs, ys) == pytest.approx(slope)
    with pytest.raises(ValueError):
        scaling.fit_exponent([8], [1.0])
    with pytest.raises(ValueError):
        scaling.fit_exponent([8, 16], [1.0, 0.0])


def test_scaling_refuses_unknown_variants():
    with pytest.raises(ValueError, match="unknown"):
        scaling.scaling(True, variants=("divided",))
    with pytest.raises(ValueError, match="unknown"):
        scaling.scaling(True, maskings=("mask75",))


def test_quick_scaling_reports_every_metric():
    # quick mode narrowed to two variants and two clip lengths (each step compiles in a few seconds)
    variants, frames = ("joint", "factorised_encoder"), (4, 8)
    results = scaling.scaling(True, variants=variants, frames=frames)
    expected = set()
    for variant in variants:
        for masking in scaling.MASKINGS:
            prefix = f"scaling/{variant}/{masking}"
            expected |= {f"{prefix}/time_exponent", f"{prefix}/memory_exponent"}
            expected |= {f"{prefix}/frames{t}/{metric}" for t in frames for metric in ("step_s", "peak_mb")}
    assert set(results) == expected
    for key, value in results.items():
        assert math.isfinite(value), (key, value)
        if not key.endswith("_exponent"):
            assert value > 0, (key, value)
    joint = [results[f"scaling/joint/mask0/frames{t}/peak_mb"] for t in frames]
    assert joint == sorted(joint) and joint[0] < joint[-1]
    assert results["scaling/joint/mask0/memory_exponent"] > 0
    # masking half the tubelets encodes fewer tokens, so the compiled step needs less memory
    assert results["scaling/joint/mask50/frames8/peak_mb"] < results["scaling/joint/mask0/frames8/peak_mb"]
