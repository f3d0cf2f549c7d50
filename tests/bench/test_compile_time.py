"""The `compile` section's measurement, in fresh processes on the micro model: the second process finds the
first one's program in the persistent cache. Timings are never asserted (the machine is shared)."""

import math

from conftest import MICRO, chosen_towers_only
from vlm_jax.bench import compile_time


def test_a_second_fresh_process_compiles_from_the_cache(tiny_dataset, tmp_path):
    data_dir = str(tiny_dataset.parents[2])
    overrides = chosen_towers_only([o for o in MICRO if o.startswith(("data.", "model.", "train.batch_size"))])
    cache = tmp_path / "xla_cache"
    cold = compile_time._in_fresh_process("tiny", data_dir, str(cache), *overrides)
    assert set(cold) == {"trace_s", "lower_s", "compile_s", "total_s", "equations"}
    assert all(math.isfinite(v) and v >= 0 for v in cold.values())
    assert cold["total_s"] >= cold["compile_s"] and cold["equations"] > 1000
    filled = sorted(p.name for p in cache.iterdir())
    assert filled  # the cold compile wrote its program
    cached = compile_time._in_fresh_process("tiny", data_dir, str(cache), *overrides)
    assert cached["equations"] == cold["equations"]
    assert sorted(p.name for p in cache.iterdir()) == filled  # found there: nothing new was written
