import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import (assert_all_leaves_named, assert_encoder_gradients_reach_every_parameter,
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
    model, _, out = model_and_variables
    grid = model.token_grid(VIDEO.shape)
    assert (grid.time, grid.height, grid.width) == (8, 2, 2)
    assert out.tokens.shape == (2, grid.size, 64) and out.pooled.shape == (2, 64) and out.mask is None
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
    """temporal="mean" pools a bag of frames, but its tokens say when each frame was; the transformer's
    pooled vector depends on the order too."""
    model, variables, out = model_and_variables
    order = np.random.default_rng(0).permutation(VIDEO.shape[1])
    shuffled = jax.jit(model.apply)(variables, VIDEO[:, order])
    cells = lambda tokens: np.asarray(tokens).reshape(2, VIDEO.shape[1], -1, tokens.shape[-1])
    if model.temporal == "mean":
        np.testing.assert_allclose(shuffled.pooled, out.pooled, rtol=0, atol=1e-5)  # summation order only
        frame_positions = np.asarray(variables["params"]["frame_positions"].value)
        moved = cells(out.tokens)[:, order] - frame_positions[order][None, :, None] + frame_positions[None, :8, None]
        np.testing.assert_allclose(cells(shuffled.tokens), moved, rtol=1e-5, atol=1e-5)
        assert np.abs(cells(shuffled.tokens) - cells(out.tokens)[:, order]).max() > 1e-3
    else:
        assert np.abs(shuffled.pooled - out.pooled).max() > 1e-3


def test_tokens_tell_where_a_shape_is():
    """The same square on the left and on the right: the grid's tokens differ several times more than the
    one vector per frame a trunk that averages space away gives (grid=1, the old encoder)."""
    video = np.full((2, 2, 32, 32, 3), -1.0, np.float32)
    video[0, :, 12:20, 2:10] = 1.0  # left
    video[1, :, 12:20, 22:30] = 1.0  # right

    def change(grid: int) -> float:
        _, out = init_and_apply(tiny(temporal="mean", grid=grid), jnp.asarray(video))
        tokens = np.asarray(out.tokens)
        return float(np.abs(tokens[0] - tokens[1]).mean() / np.abs(tokens[0]).mean())

    assert change(2) > 4 * change(1)


def test_bfloat16_compute():
    variables, out = init_and_apply(tiny(temporal="transformer", dtype=jnp.bfloat16))
    assert out.tokens.dtype == jnp.bfloat16 and np.isfinite(out.pooled.astype(jnp.float32)).all()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(nn.meta.unbox(variables)))


def test_bad_settings_are_reported():
    with pytest.raises(ValueError, match="unknown temporal"):
        jax.eval_shape(tiny(temporal="lstm").init, KEY, VIDEO)
    with pytest.raises(ValueError, match="max_frames"):
        jax.eval_shape(tiny(temporal="transformer", max_frames=4).init, KEY, VIDEO)


@pytest.mark.parametrize("size", list(SIZES))
def test_sizes_build_for_64px_16_frame_clips(size):
    model = CNN2D(**SIZES[size])
    out = jax.eval_shape(lambda: model.apply(model.init(KEY, jnp.zeros((1, 16, 64, 64, 3))),
                                             jnp.zeros((1, 16, 64, 64, 3))))
    assert out.tokens.shape == (1, 16 * SIZES[size]["grid"] ** 2, SIZES[size]["embed_dim"])


def test_the_motion_stream_sees_the_order_of_frames():
    """With frame_difference, a second trunk reads each frame's change since the previous one, so even
    temporal="mean" tokens depend on the order beyond their frame positions (without it, see
    test_frame_order, reordering only moves the tokens)."""
    model = tiny(temporal="mean", frame_difference=True)
    variables, out = init_and_apply(model)
    assert set(variables["params"]) >= {"trunk", "motion_trunk"}
    reversed_order = np.arange(VIDEO.shape[1])[::-1]
    shuffled = jax.jit(model.apply)(variables, VIDEO[:, reversed_order])
    frame_positions = np.asarray(variables["params"]["frame_positions"].value)[:VIDEO.shape[1]]
    cells = lambda tokens: np.asarray(tokens).reshape(2, VIDEO.shape[1], -1, tokens.shape[-1])
    moved = cells(out.tokens)[:, reversed_order] - frame_positions[reversed_order][None, :, None] \
        + frame_positions[None, :, None]
    assert np.abs(cells(shuffled.tokens) - moved).max() > 1e-2
    assert_encoder_gradients_reach_every_parameter(model, variables, VIDEO)
