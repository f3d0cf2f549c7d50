"""`vlm bench`'s memory section: per-device bytes (8 fake devices, in the bench's own subprocess). Timings are
never asserted (the machine is shared); `vlm bench --quick` as a whole runs in scripts/demo.sh."""

from pathlib import Path

import pytest

from conftest import MICRO, data_dir_of
from vlm_jax.bench import memory

FSDP = memory.MEMORY_FSDP


def _data_dir(dataset: Path) -> str:
    return str(data_dir_of(dataset))


def test_state_per_device_shrinks_with_fsdp(tiny_dataset):
    """Abstract only (no compile): the tiny preset's parameters + optimizer state per device nearly halve
    each time fsdp doubles (the big kernels split over "fsdp"; biases, norms and odd sizes stay whole)."""
    results = memory.memory(quick=True, data_dir=_data_dir(tiny_dataset))
    state = [results[f"memory/tiny/fsdp{k}/state_mb_per_device"] for k in FSDP]
    for bigger, smaller in zip(state, state[1:]):
        assert bigger / 2 <= smaller < bigger, state  # never better than an even split, always smaller
    assert state[-1] < state[0] / 4, state


@pytest.mark.slow
def test_compiled_memory_accounts_for_the_state(tiny_dataset):
    """The compiled step of the micro model on mesh (2, 4, 1) (one compile, minutes on 2 shared cores):
    its arguments are the state plus the batch entries it reads, and the whole state is donated (aliased
    to the new state)."""
    results = memory.memory(quick=False, data_dir=_data_dir(tiny_dataset), compiled=True, overrides=MICRO,
                            fsdp=(4,))
    key = "memory/tiny/fsdp4"
    state = results[f"{key}/state_mb_per_device"]
    assert results[f"{key}/argument_mb"] - results[f"{key}/batch_mb_per_device"] == pytest.approx(state, rel=1e-9)
    assert results[f"{key}/alias_mb"] == pytest.approx(state, rel=1e-9)
    assert results[f"{key}/temp_mb"] > 0
