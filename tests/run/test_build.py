"""`run.build`: a run built from its config."""

import pytest

from conftest import data_dir_of, micro
from vlm_jax import config as config_lib
from vlm_jax.run import build


@pytest.mark.parametrize("num_steps, warmup", [(2, 1), (1, 0), (400, 10)])
def test_a_shortened_run_warms_up_within_its_own_updates(tiny_dataset, num_steps, warmup):
    """The tiny preset warms up over 10 updates; `train.num_steps=2` (a smoke run) must still train, its
    warmup cut to the run's updates less one, so that the last updates have a learning rate."""
    config = config_lib.load("configs/pretrain.py:tiny", micro(f"data.data_dir={data_dir_of(tiny_dataset)}",
                                                              f"train.num_steps={num_steps}"))
    run = build.Run(config)
    peak = float(config.optim.learning_rate)
    assert float(run.schedule(0)) == (0.0 if warmup else pytest.approx(peak))
    assert float(run.schedule(warmup)) == pytest.approx(peak)
