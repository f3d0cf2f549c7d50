"""Shared layers: masking, causality, the KV cache, rotary positions, scan/remat, logical axes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import assert_all_leaves_named, assert_gradients_finite_and_nonzero
from vlm_jax.models import layers

X = jax.random.normal(jax.random.key(0), (2, 10, 32))
CONTEXT = jax.random.normal(jax.random.key(1), (2, 7, 24))
MASK = jnp.array([[True] * 10, [True] * 6 + [False] * 4])
CONTEXT_MASK = jnp.array([[True] * 7, [True] * 3 + [False] * 4])


def _stack(**kw):
    return layers.Transformer(num_layers=2, num_heads=4, mlp_dim=64, **kw)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("remat", ["none", "dots"])
def test_transformer_shapes_grad_and_axes(scan, remat):
    model = _stack(cross_attention=True, scan=scan, remat=remat)
    variables = model.init(jax.random.key(2), X, MASK, CONTEXT, CONTEXT_MASK)
    assert_all_leaves_named(variables)
    out = jax.jit(lambda v: model.apply(v, X, MASK, CONTEXT, CONTEXT_MASK))(variables)
    assert out.shape == X.shape
    grads = jax.grad(lambda v: model.apply(v, X, MASK, CONTEXT, CONTEXT_MASK).sum())(variables)
    assert_gradients_finite_and_nonzero(grads)


def test_scan_equals_unrolled_with_the_same_weights():
    unrolled, scanned = _stack(), _stack(scan=True)
    params = nn.meta.unbox(unrolled.init(jax.random.key(3), X, MASK))["params"]
    stacked = {"layers": {"block": jax.tree.map(lambda *xs: jnp.stack(xs), params["layer_0"], params["layer_1"])}}
    np.testing.assert_allclose(scanned.apply({"params": stacked}, X, MASK), unrolled.apply({"params": params}, X, MASK),
                               atol=1e-5)


def test_padding_really_masks():
    model = _stack(cross_attention=True)
    variables = model.init(jax.random.key(4), X, MASK, CONTEXT, CONTEXT_MASK)
    out = model.apply(variables, X, MASK, CONTEXT, CONTEXT_MASK)
    changed_x = X.at[1, 6:].set(50.0)
    changed_context = CONTEXT.at[1, 3:].set(-50.0)
    again = model.apply(variables, changed_x, MASK, changed_context, CONTEXT_MASK)
    np.testing.assert_allclose(again[1, :6], out[1, :6], atol=1e-5)
    np.testing.assert_array_equal(again[0], out[0])


def test_causal_cannot_see_the_future_and_cache_equals_full_decoding():
    full_model, step_model = _stack(causal=True, use_rotary=True), _stack(causal=True, use_rotary=True, decode=True)
    params = full_model.init(jax.random.key(5), X)["params"]
    full = full_model.apply({"params": params}, X)
    future_changed = full_model.apply({"params": params}, X.at[:, 5:].set(3.0))
    np.testing.assert_allclose(future_changed[:, :5], full[:, :5], atol=1e-5)
    cache = step_model.init(jax.random.key(5), X)["cache"]
    steps = []
    for t in range(X.shape[1]):
        out, updated = step_model.apply({"params": params, "cache": cache}, X[:, t:t + 1], mutable=["cache"])
        cache = updated["cache"]
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.key(6), (1, 1, 1, 16))
    k = jax.random.normal(jax.random.key(7), (1, 1, 1, 16))
    score = lambda i, j: float((layers.rotary(q, jnp.array([i])) * layers.rotary(k, jnp.array([j]))).sum())
    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_bf16_compute_with_f32_parameters_stays_close():
    f32, bf16 = _stack(), _stack(dtype=jnp.bfloat16)
    variables = f32.init(jax.random.key(8), X, MASK)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nn.meta.unbox(variables)))
    low = bf16.apply(variables, X.astype(jnp.bfloat16), MASK)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(low.astype(jnp.float32), f32.apply(variables, X, MASK), atol=0.1)


def test_unknown_remat_policy_is_rejected():
    with pytest.raises(ValueError, match="unknown remat policy"):
        _stack(remat="everything").init(jax.random.key(0), X)


@pytest.mark.parametrize("group_bytes", [layers.ATTENTION_GROUP_BYTES, 1])  # whole batch; one example per group
@pytest.mark.parametrize("masked,causal", [(False, False), (True, False), (True, True)])
def test_attend_equals_jax_attention_values_and_gradients(monkeypatch, group_bytes, masked, causal):
    monkeypatch.setattr(layers, "ATTENTION_GROUP_BYTES", group_bytes)
    keys = jax.random.split(jax.random.key(0), 5)
    batch, length, heads, head_dim = 4, 9, 2, 8
    query, key, value, d_out = (jax.random.normal(k, (batch, length, heads, head_dim)) for k in keys[:4])
    mask = None
    if masked:  # example 0 sees no key at all: both spread its attention evenly
        valid = (jax.random.uniform(keys[4], (batch, length)) > 0.4).at[0].set(False)
        mask = layers.key_padding_mask(valid)

    def outputs_and_gradients(attention):
        out, vjp = jax.vjp(attention, query, key, value)
        return (out, *vjp(d_out))

    ours = jax.jit(lambda: outputs_and_gradients(lambda q, k, v: layers.attend(q, k, v, mask, causal)))()
    reference = jax.jit(lambda: outputs_and_gradients(
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)))()
    for name, a, b in zip(("out", "d_query", "d_key", "d_value"), ours, reference):
        np.testing.assert_allclose(a, b, atol=2e-6, err_msg=name)


def test_attend_in_bf16_stays_close_to_float32():
    keys = jax.random.split(jax.random.key(1), 3)
    query, key, value = (jax.random.normal(k, (2, 17, 2, 16)) for k in keys)
    exact = layers.attend(query, key, value)
    low = layers.attend(*(x.astype(jnp.bfloat16) for x in (query, key, value)))
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(low.astype(jnp.float32), exact, atol=3e-2)
