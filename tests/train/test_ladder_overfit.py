"""Rung 1 of the sanity ladder (see ladder.py): every video encoder with the QA head memorises one batch."""

import pytest

from ladder import ENCODERS, accuracy_per_type, run_from_scratch, train
from vlm_jax.data import pipeline


@pytest.mark.parametrize("encoder", ENCODERS)
def test_each_video_encoder_overfits_one_batch_on_every_question_type(encoder, tiny_dataset):
    run = run_from_scratch(tiny_dataset, *ENCODERS[encoder], "train.batch_size=4", "optim.learning_rate=1e-3",
                           "train.num_steps=100")
    batch = next(iter(pipeline.train_dataset(run.spec)))
    state = train(run, [batch] * 100)
    accuracy = accuracy_per_type(run, state, batch)
    assert set(accuracy) >= {"colour", "shape", "count", "direction", "sound", "yesno"}, accuracy
    assert all(value == 1.0 for value in accuracy.values()), accuracy
