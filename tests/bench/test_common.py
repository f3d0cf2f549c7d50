"""`common.encoder_train_step`, the one AdamW step that the mfu, scaling and peers sections compile and time:
it trains the encoder and whatever else the loss reads, updates the encoder's BatchNorm statistics, hands it
its dropout rng, and its donated state threads through `time_train_step`. Timings are never asserted."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.bench import common


class _Encoder(nn.Module):
    """The smallest encoder with what the real ones use in training: BatchNorm statistics and dropout."""

    @nn.compact
    def __call__(self, video, train=False):
        x = nn.Dense(4)(video.reshape(video.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train)(x)
        return types.SimpleNamespace(pooled=nn.Dropout(0.5, deterministic=not train)(x))


def _scaled_square(params, pooled, target):
    return jnp.mean(jnp.square(pooled * params["scale"] - target))


def _state(init):
    model, video = _Encoder(), jnp.linspace(-1.0, 1.0, 2 * 3 * 4).reshape(2, 3, 4)
    variables = model.init(jax.random.key(0), video)
    return video, init({"encoder": variables["params"], "scale": jnp.ones(())},
                       {"batch_stats": variables["batch_stats"]})


def _moved(after, before) -> bool:
    return any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)))


def test_step_trains_the_encoder_its_statistics_and_the_loss_parameters():
    step, init = common.encoder_train_step(_Encoder(), _scaled_square)
    video, state = _state(init)
    before = jax.tree.map(np.array, state)  # copies: the step donates its state
    params, opt_state, extra, loss = step(*state, video, jnp.zeros((2, 4)), jax.random.key(1))
    assert np.isfinite(float(loss))
    assert _moved(params["encoder"], before[0]["encoder"]) and _moved(params["scale"], before[0]["scale"])
    assert _moved(extra["batch_stats"], before[2]["batch_stats"])
    assert jax.tree.structure(opt_state) == jax.tree.structure(before[1])


def test_timing_threads_the_donated_state_and_returns_the_last_loss():
    step, init = common.encoder_train_step(_Encoder(), _scaled_square)
    video, state = _state(init)
    keys = []
    step_s, loss = common.time_train_step(step, state, video, jnp.zeros((2, 4)),
                                          lambda i: keys.append(i) or jax.random.key(i), timed_steps=2)
    assert keys == [0, 1, 2] and step_s > 0 and np.isfinite(float(loss))


def test_pooled_mean_square_is_in_float32():
    value = common.pooled_mean_square(None, jnp.array([[1.0, 2.0]], jnp.bfloat16), None)
    assert value.dtype == jnp.float32 and float(value) == 2.5
