"""Assertions shared by the model tests: logical axis names on every variable, gradients reaching every
parameter. Test files import it as `from model_checks import ...` (the tests folder is on sys.path, as for conftest)."""

import flax.linen as nn
import jax
import numpy as np


def _path(key_path) -> str:
    return jax.tree_util.keystr(key_path, simple=True, separator="/")


def assert_all_leaves_named(variables) -> None:
    """Every leaf of `variables`, in every collection (params, batch_stats, ...), is an
    `nn.LogicallyPartitioned` box with one logical axis name per dimension; a raw array fails."""
    leaves = jax.tree_util.tree_leaves_with_path(variables, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    assert leaves, "no variables"
    for key_path, leaf in leaves:
        path = _path(key_path)
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{path}: not logically partitioned ({type(leaf).__name__})"
        assert len(leaf.names) == np.ndim(leaf.value), f"{path}: names {leaf.names} for shape {leaf.value.shape}"


def assert_gradients_finite_and_nonzero(grads, allow_zero=()) -> None:
    """Every gradient leaf (boxed or not) is finite and not all zero, except that a leaf whose "/"-joined
    path contains one of the `allow_zero` substrings may be all zero (it must still be finite)."""
    leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(grads))
    assert leaves, "no gradients"
    for key_path, grad in leaves:
        path = _path(key_path)
        grad = np.asarray(grad)
        assert np.isfinite(grad).all(), f"non-finite gradient at {path}"
        assert np.any(grad != 0) or any(part in path for part in allow_zero), f"no gradient reaches {path}"


def assert_vmap_over_clip_groups(model, variables, video, pooled) -> None:
    """vmap over groups of one clip gives the batched output: [2, 1, D] equal to `pooled` [2, D]."""
    groups = video.reshape(video.shape[0], 1, *video.shape[1:])
    mapped = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))(variables, groups)
    assert mapped.pooled.shape == (video.shape[0], 1, pooled.shape[-1])
    np.testing.assert_allclose(mapped.pooled[:, 0], pooled, rtol=1e-5, atol=1e-5)


def assert_encoder_gradients_reach_every_parameter(model, variables, video) -> None:
    """A random projection of the tokens plus the pooled norm as loss: every parameter gets a gradient."""
    tokens = jax.eval_shape(lambda: model.apply(variables, video)).tokens
    weights = np.random.default_rng(2).normal(size=tokens.shape).astype(np.float32)

    def loss(params):
        out = model.apply({"params": params}, video, train=True)
        return jax.numpy.sum(out.tokens * weights) + jax.numpy.sum(out.pooled ** 2)

    assert_gradients_finite_and_nonzero(jax.jit(jax.grad(loss))(variables["params"]))
