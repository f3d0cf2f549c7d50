"""The optimizer from the `optim` config block: schedule, weight-decay mask, frozen modules,
learning-rate multipliers, gradient accumulation and clipping."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlm_jax.errors import UserError
from vlm_jax.train import optim


def _config(**overrides):
    config = optim.default_optim_config()
    config.update(overrides)
    return config


class _Tower(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.LayerNorm(name="norm")(nn.Dense(4, name="dense")(x))


class _Model(nn.Module):
    @nn.compact
    def __call__(self, x):
        return _Tower(name="video_encoder")(x) + _Tower(name="text_encoder")(x)


def _params():
    return _Model().init(jax.random.key(0), jnp.ones((2, 3)))["params"]


def _grads_like(params, seed=1):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _adam_states(opt_state):
    return [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]


def test_schedule_warmup_then_cosine_to_end_ratio():
    config = _config(learning_rate=1e-3, warmup_steps=10, total_steps=110, end_lr_ratio=0.1)
    lr = optim.schedule(config)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(60)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # half way down the cosine
    assert float(lr(110)) == pytest.approx(1e-4)
    assert float(lr(1000)) == pytest.approx(1e-4)
    no_warmup = optim.schedule(_config(learning_rate=1e-3, warmup_steps=0, total_steps=100, end_lr_ratio=0.0))
    assert float(no_warmup(0)) == pytest.approx(1e-3) and float(no_warmup(100)) == pytest.approx(0.0)
    with pytest.raises(UserError, match="warmup_steps"):
        optim.schedule(_config(warmup_steps=100, total_steps=100))


def test_weight_decay_mask_excludes_bias_scale_and_1d():
    mask = optim.decay_mask(_params())
    tower = mask["video_encoder"]
    assert tower["dense"]["kernel"] is True
    assert tower["dense"]["bias"] is False
    assert tower["norm"]["scale"] is False and tower["norm"]["bias"] is False
    # stacked (scanned) layers: a bias is 2-D but still not decayed; 0-D/1-D parameters never are
    stacked = {"blocks": {"bias": jnp.zeros((3, 4)), "kernel": jnp.zeros((3, 4, 4))}, "log_scale": jnp.zeros(()),
               "cls": jnp.zeros((4,)), "positions": {"embedding": jnp.zeros((8, 4))}}
    assert optim.decay_mask(stacked) == {"blocks": {"bias": False, "kernel": True}, "log_scale": False,
                                         "cls": False, "positions": {"embedding": True}}


def test_weight_decay_applies_only_where_masked():
    params = _params()
    config = _config(warmup_steps=0, total_steps=10, weight_decay=0.5, clip_norm=0.0)
    tx = optim.make_optimizer(config, params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)  # zero gradient: only weight decay moves params
    lr = float(optim.schedule(config)(0))
    tower_u, tower_p = updates["video_encoder"], params["video_encoder"]
    np.testing.assert_allclose(tower_u["dense"]["kernel"], -lr * 0.5 * tower_p["dense"]["kernel"], rtol=1e-6)
    assert not np.any(tower_u["dense"]["bias"]) and not np.any(tower_u["norm"]["scale"])


def test_frozen_modules_get_zero_updates_and_no_moments():
    params = _params()
    config = _config(warmup_steps=0, frozen=["video_encoder"])
    tx = optim.make_optimizer(config, params)
    state = tx.init(params)
    grads = _grads_like(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert all(not np.any(u) for u in jax.tree.leaves(updates["video_encoder"]))
    assert all(np.any(u) for u in jax.tree.leaves(updates["text_encoder"]))
    # the only Adam state covers text_encoder; video_encoder holds masked placeholders, no arrays
    (adam,) = _adam_states(state)
    assert jax.tree.leaves(adam.mu["video_encoder"]) == []
    assert len(jax.tree.leaves(adam.mu["text_encoder"])) == 4
    n_params = sum(x.size for x in jax.tree.leaves(params))
    n_state = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
    assert n_state == n_params  # mu + nu for the trainable half only
    assert optim.param_labels(config, params)["video_encoder"]["dense"]["kernel"] == optim.FROZEN


def test_frozen_gradients_do_not_count_towards_clipping():
    params = _params()
    grads = _grads_like(params)
    grads = {**grads, "video_encoder": jax.tree.map(lambda g: g * 1e6, grads["video_encoder"])}
    tx = optim.make_optimizer(_config(warmup_steps=0, frozen=["video_encoder"], clip_norm=1e3), params)
    _, state = tx.update(grads, tx.init(params), params)
    (adam,) = _adam_states(state)
    b1 = float(optim.default_optim_config().b1)
    # text_encoder's gradient (norm << 1e3) reached Adam unclipped
    np.testing.assert_allclose(adam.mu["text_encoder"]["dense"]["kernel"],
                               (1 - b1) * grads["text_encoder"]["dense"]["kernel"], rtol=1e-6)


def test_lr_multiplier_scales_the_update():
    params = _params()
    # identical gradients for both towers, so their Adam directions are equal
    grads = _grads_like(params)
    grads = {"video_encoder": grads["text_encoder"], "text_encoder": grads["text_encoder"]}
    params = {"video_encoder": params["text_encoder"], "text_encoder": params["text_encoder"]}
    tx = optim.make_optimizer(_config(warmup_steps=0, lr_multipliers={"video_encoder": 0.1}), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for v, t in zip(jax.tree.leaves(updates["video_encoder"]), jax.tree.leaves(updates["text_encoder"])):
        np.testing.assert_allclose(v, 0.1 * t, rtol=1e-5, atol=1e-12)
    # a longer prefix wins over a shorter one; a zero multiplier freezes
    labels = optim.param_labels(_config(lr_multipliers={"video_encoder": 0.1, "video_encoder/dense": 0.0}), params)
    assert labels["video_encoder"]["dense"]["kernel"] == optim.FROZEN
    assert labels["video_encoder"]["norm"]["scale"] == "lr*0.1"
    assert labels["text_encoder"]["norm"]["scale"] == "lr*1.0"


def test_unknown_prefix_is_a_user_error():
    with pytest.raises(UserError, match="video_encodr.*top-level modules are: text_encoder, video_encoder"):
        optim.make_optimizer(_config(frozen=["video_encodr"]), _params())
    with pytest.raises(UserError, match="'video'"):  # prefixes match whole path components
        optim.make_optimizer(_config(lr_multipliers={"video": 2.0}), _params())


def test_grad_accumulation_equals_one_step_on_the_mean_gradient():
    k, batch = 4, 8
    w_true = jax.random.normal(jax.random.key(0), (3, 2))
    x = jax.random.normal(jax.random.key(1), (k * batch, 3))
    y = x @ w_true
    params = {"video_encoder": {"dense": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros((2,))}}}

    def loss(p, xb, yb):
        d = p["video_encoder"]["dense"]
        return jnp.mean((xb @ d["kernel"] + d["bias"] - yb) ** 2)

    base = dict(warmup_steps=2, total_steps=10, weight_decay=0.1, clip_norm=0.5)
    big = optim.make_optimizer(_config(**base), params)
    small = optim.make_optimizer(_config(**base, grad_accum_steps=k), params)

    def make_step(tx):
        @jax.jit
        def step(p, s, xb, yb):
            u, s = tx.update(jax.grad(loss)(p, xb, yb), s, p)
            return optax.apply_updates(p, u), s, u
        return step

    big_step, small_step = make_step(big), make_step(small)
    p_big, s_big = params, big.init(params)
    p_small, s_small = params, small.init(params)
    for _ in range(3):  # three optimizer updates (the first has lr 0 during warmup)
        p_big, s_big, _ = big_step(p_big, s_big, x, y)
        for i in range(k):
            sl = slice(i * batch, (i + 1) * batch)
            p_small, s_small, u = small_step(p_small, s_small, x[sl], y[sl])
            if i < k - 1:
                assert all(not np.any(leaf) for leaf in jax.tree.leaves(u))
    assert np.any(p_big["video_encoder"]["dense"]["kernel"])
    for a, b in zip(jax.tree.leaves(p_big), jax.tree.leaves(p_small)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_clipping_bounds_the_gradient_norm_seen_by_adam():
    params = _params()
    grads = jax.tree.map(lambda g: 100.0 * g, _grads_like(params))
    assert optax.global_norm(grads) > 10
    b1 = float(optim.default_optim_config().b1)
    for clip in (1.0, 0.25):
        tx = optim.make_optimizer(_config(warmup_steps=0, clip_norm=clip), params)
        updates, state = tx.update(grads, tx.init(params), params)
        (adam,) = _adam_states(state)
        seen = optax.global_norm(adam.mu) / (1 - b1)  # first moment after one step = (1 - b1) * clipped grad
        assert float(seen) == pytest.approx(clip, rel=1e-5)
    # and the update itself stays bounded by lr * sqrt(n) (Adam's per-coordinate bound) * (1 + wd slack)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert float(optax.global_norm(updates)) <= 3e-4 * np.sqrt(n) * 1.01 + 1e-6


def test_jit_and_abstract_params():
    params = _params()
    abstract = jax.eval_shape(lambda: params)
    config = _config(warmup_steps=1, frozen=["text_encoder/norm"], lr_multipliers={"video_encoder": 0.5},
                     grad_accum_steps=2)
    tx = optim.make_optimizer(config, abstract)
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    grads = _grads_like(params)
    for _ in range(4):
        params, state = step(params, state, grads)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
