import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checks import (assert_all_leaves_named, assert_encoder_gradients_reach_every_parameter,
                    assert_vmap_over_clip_groups)
from vlm_jax.models.video.cnn2d import CNN2D, SIZES

VIDEO = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 32, 32, 3)), jnp.float32)
# rbg keys: XLA on CPU takes ~0.3 s to compile each threefry draw, and an init makes dozens.
KEY = jax.random.key(1, impl="rbg")


def tiny(**overrides) -> CNN2D:
    return CNN2D(**{**SIZES["tiny"], "num_layers": 1, "num_heads": 2, "mlp_dim": 64, **overrides})


def init_and_apply(model: CNN2D, video: jax.Array = VIDEO):
    """Jitted init and forward (eager flax dispatches op by op, far slower for these tests)."""
    variables = jax.jit(model.init)(KEY, video)
    return variables, jax.jit(model.apply)(variables, video)


@pytest.fixture(scope="module", params=["mean", "transformer"])
def model_and_variables(request):
    model = tiny(temporal=request.param)
    return model, *init_and_apply(model)


def test_forward_shapes(model_and_variables):
    _, _, out = model_and_variables
    assert out.tokens.shape == (2, 8, 64) and out.pooled.shape == (2, 64) and out.mask is None
    np.testing.assert_allclose(out.pooled, out.tokens.mean(axis=1), rtol=1e-6, atol=1e-6)


def test_vmap_over_clip_groups(model_and_variables):
    model, variables, out = model_and_variables
    assert_vmap_over_clip_groups(model, variables, VIDEO, out.pooled)


def test_every_parameter_gets_a_finite_nonzero_gradient(model_and_variables):
    model, variables, _ = model_and_variables
    assert_encoder_gradients_reach_every_parameter(model, variables, VIDEO)


def test_every_parameter_has_logical_axes(model_and_variables):
    _, variables, _ = model_and_variables
    assert_all_leaves_named(variables)


def test_frame_order(model_and_variables):
    """temporal="mean" is a bag of frames; the transformer's positions make order matter."""
    model, variables, out = model_and_variables
    order = np.random.default_rng(0).permutation(VIDEO.shape[1])
    shuffled = jax.jit(model.apply)(variables, VIDEO[:, order])
    if model.temporal == "mean":
        np.testing.assert_array_equal(shuffled.tokens, out.tokens[:, order])  # each frame is encoded alone
        np.testing.assert_allclose(shuffled.pooled, out.pooled, rtol=0, atol=1e-6)  # summation order only
    else:
        assert np.abs(shuffled.pooled - out.pooled).max() > 1e-3


def test_bfloat16_compute():
    variables, out = init_and_apply(tiny(temporal="transformer", dtype=jnp.bfloat16))
    assert out.tokens.dtype == jnp.bfloat16 and np.isfinite(out.pooled.astype(jnp.float32)).all()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(nn.meta.unbox(variables)))


def test_bad_settings_are_reported():
    with pytest.raises(ValueError, match="temporal mode"):
        jax.eval_shape(tiny(temporal="lstm").init, KEY, VIDEO)
    with pytest.raises(ValueError, match="max_frames"):
        jax.eval_shape(tiny(temporal="transformer", max_frames=4).init, KEY, VIDEO)


@pytest.mark.parametrize("size", list(SIZES))
def test_sizes_build_for_64px_16_frame_clips(size):
    model = CNN2D(**SIZES[size])
    out = jax.eval_shape(lambda: model.apply(model.init(KEY, jnp.zeros((1, 16, 64, 64, 3))),
                                             jnp.zeros((1, 16, 64, 64, 3))))
    assert out.tokens.shape == (1, 16, SIZES[size]["embed_dim"])
