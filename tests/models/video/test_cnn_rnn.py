import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import (assert_all_leaves_named, assert_encoder_gradients_reach_every_parameter,
                    assert_vmap_over_clip_groups)
from vlm_jax.models.video.cnn_rnn import CNNRNN, SIZES

VIDEO = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 32, 32, 3)), jnp.float32)
# rbg keys: XLA on CPU takes ~0.3 s to compile each threefry draw, and an init makes dozens.
KEY = jax.random.key(1, impl="rbg")
VARIANTS = {"lstm": {}, "gru_bidirectional_2_layers": {"cell": "gru", "bidirectional": True, "num_layers": 2}}


def init_and_apply(model: CNNRNN, video: jax.Array = VIDEO):
    """Jitted init and forward (eager flax dispatches op by op, far slower for these tests)."""
    variables = jax.jit(model.init)(KEY, video)
    return variables, jax.jit(model.apply)(variables, video)


@pytest.fixture(scope="module", params=list(VARIANTS))
def model_and_variables(request):
    model = CNNRNN(**{**SIZES["tiny"], **VARIANTS[request.param]})
    return model, *init_and_apply(model)


def test_forward_shapes(model_and_variables):
    _, _, out = model_and_variables
    assert out.tokens.shape == (2, 8, 64) and out.pooled.shape == (2, 64) and out.mask is None
    assert np.isfinite(out.tokens).all()


def test_pooled_is_the_final_state(model_and_variables):
    """pooled = project(forward state after the last frame [+ backward state after the first])."""
    model, variables, out = model_and_variables
    _, state = jax.jit(lambda v: model.apply(v, VIDEO, capture_intermediates=True))(variables)
    states = state["intermediates"][f"layer_{model.num_layers - 1}"]["__call__"][0]
    final = states[:, -1]
    if model.bidirectional:
        final = jnp.concatenate([states[:, -1, :model.hidden], states[:, 0, model.hidden:]], axis=-1)
    project = nn.meta.unbox(variables)["params"]["project"]
    np.testing.assert_allclose(out.pooled, final @ project["kernel"] + project["bias"], rtol=1e-5, atol=1e-5)


def test_vmap_over_clip_groups(model_and_variables):
    model, variables, out = model_and_variables
    assert_vmap_over_clip_groups(model, variables, VIDEO, out.pooled)


def test_every_parameter_gets_a_finite_nonzero_gradient(model_and_variables):
    model, variables, _ = model_and_variables
    assert_encoder_gradients_reach_every_parameter(model, variables, VIDEO)


def test_every_parameter_has_logical_axes(model_and_variables):
    _, variables, _ = model_and_variables
    assert_all_leaves_named(variables)


def test_recurrence_sees_frame_order(model_and_variables):
    model, variables, out = model_and_variables
    reversed_out = jax.jit(model.apply)(variables, VIDEO[:, ::-1])
    assert np.abs(reversed_out.pooled - out.pooled).max() > 1e-3


def test_bfloat16_compute():
    variables, out = init_and_apply(CNNRNN(**SIZES["tiny"], dtype=jnp.bfloat16))
    assert out.tokens.dtype == jnp.bfloat16 and np.isfinite(out.pooled.astype(jnp.float32)).all()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(nn.meta.unbox(variables)))


def test_unknown_cell_is_reported():
    with pytest.raises(ValueError, match="unknown cell"):
        jax.eval_shape(CNNRNN(**{**SIZES["tiny"], "cell": "transformer"}).init, KEY, VIDEO)


@pytest.mark.parametrize("size", list(SIZES))
def test_sizes_build_for_64px_16_frame_clips(size):
    model = CNNRNN(**SIZES[size])
    video = jnp.zeros((1, 16, 64, 64, 3))
    out = jax.eval_shape(lambda: model.apply(model.init(KEY, video), video))
    assert out.tokens.shape == (1, 16, SIZES[size]["embed_dim"])
