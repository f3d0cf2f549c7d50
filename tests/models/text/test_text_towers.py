"""Text towers: bag-of-words and BERT share one contract (shapes, masking, transforms, sharding names, tied logits)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from model_checks import assert_all_leaves_named, assert_gradients_finite_and_nonzero
from vlm_jax.data import tokenizer
from vlm_jax.models.text import bert, bow

MODELS = {
    "bow_mean": lambda **kw: bow.BagOfWords(**bow.SIZES["tiny"], **kw),
    "bow_max_projected": lambda **kw: bow.BagOfWords(**bow.SIZES["tiny"], pool="max", out_dim=32, **kw),
    "bert": lambda **kw: bert.Bert(**bert.SIZES["tiny"], **kw),
    "bert_pooler": lambda **kw: bert.Bert(**bert.SIZES["tiny"], pool="pooler", **kw),
}
LENGTHS = (9, 4)  # real tokens per row; the rest is padding


def batch(max_len=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, tokenizer.VOCAB_SIZE, size=(len(LENGTHS), max_len)).astype(np.int32)
    mask = (np.arange(max_len)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    ids[:, 0] = tokenizer.CLS_ID
    return np.where(mask, ids, tokenizer.PAD_ID).astype(np.int32), mask


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    model = MODELS[request.param]()
    ids, mask = batch()
    variables = model.init(jax.random.key(0), ids, mask)
    return request.param, model, nn.meta.unbox(variables), variables


def width_of(model):
    return getattr(model, "out_dim", 0) or model.width


def test_shapes_and_mask(built):
    _, model, variables, _ = built
    ids, mask = batch()
    out = model.apply(variables, ids, mask)
    assert out.tokens.shape == (2, 12, width_of(model))
    assert out.pooled.shape == (2, width_of(model))
    assert out.mask.dtype == jnp.bool_ and np.array_equal(out.mask, mask.astype(bool))
    assert np.isfinite(out.tokens).all() and np.isfinite(out.pooled).all()


def test_padding_is_masked_out(built):
    """Whatever sits in the padded slots, real tokens and the pooled vector do not change."""
    _, model, variables, _ = built
    ids, mask = batch()
    noisy = np.where(mask, ids, np.random.default_rng(1).integers(1000, 2000, ids.shape)).astype(np.int32)
    apply = model.apply
    clean, changed = apply(variables, ids, mask), apply(variables, noisy, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(clean.tokens[real], changed.tokens[real], atol=1e-5)
    np.testing.assert_allclose(clean.pooled, changed.pooled, atol=1e-5)
    shorter = apply(variables, ids[:, :9], mask[:, :9])  # dropping pure padding changes nothing either
    np.testing.assert_allclose(clean.pooled, shorter.pooled, atol=1e-5)


def test_jit_and_vmap_agree_with_eager(built):
    _, model, variables, _ = built
    ids, mask = batch()
    eager = model.apply(variables, ids, mask).pooled
    compiled = jax.jit(model.apply)(variables, ids, mask).pooled
    one = lambda i, m: model.apply(variables, i[None], m[None]).pooled[0]
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    np.testing.assert_allclose(jax.vmap(one)(ids, mask), eager, atol=1e-5)


def test_grad_is_finite_and_reaches_every_leaf(built):
    name, model, variables, _ = built
    ids, mask = batch()
    rng = np.random.default_rng(2)
    out_shape = jax.eval_shape(model.apply, variables, ids, mask)
    w_tokens, w_pooled = rng.normal(size=out_shape.tokens.shape), rng.normal(size=out_shape.pooled.shape)

    def loss(params):
        out = model.apply({"params": params}, ids, mask)
        return jnp.sum(out.tokens * w_tokens * mask[..., None]) + jnp.sum(out.pooled * w_pooled)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    # With mean or CLS pooling the BERT pooler is off the path by design (it exists for checkpoint parity).
    assert_gradients_finite_and_nonzero(grads, allow_zero=("pooler/",) if name == "bert" else ())


def test_every_leaf_has_logical_axes(built):
    _, _, _, boxed = built
    assert_all_leaves_named(boxed)


def test_logits_are_tied_to_the_word_embeddings(built):
    name, model, variables, _ = built
    ids, _ = batch()
    table_path = ("embeddings", "word_embeddings", "embedding") if name.startswith("bert") else (
        "word_embeddings", "embedding")
    table = variables["params"]
    for key in table_path:
        table = table[key]
    hidden = np.random.default_rng(3).normal(size=(2, 12, model.width)).astype(np.float32)
    np.testing.assert_array_equal(model.apply(variables, method="embedding_table"), table)
    logits = model.apply(variables, hidden, method="logits")
    assert logits.shape == (2, 12, tokenizer.VOCAB_SIZE)
    np.testing.assert_allclose(logits, hidden @ np.asarray(table).T, rtol=1e-4, atol=1e-4)
    scaled = traverse_util.unflatten_dict({**traverse_util.flatten_dict(variables), ("params",) + table_path: table * 2})
    np.testing.assert_allclose(model.apply(scaled, hidden, method="logits"), 2 * logits, rtol=1e-4, atol=1e-4)


def test_bf16_compute_runs_close_to_float32(built):
    name, _, variables, _ = built
    ids, mask = batch()
    out = MODELS[name](dtype=jnp.bfloat16).apply(variables, ids, mask)
    reference = MODELS[name]().apply(variables, ids, mask)
    assert out.tokens.dtype == jnp.bfloat16 and out.pooled.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.pooled.astype(np.float32), reference.pooled, atol=0.1)


def test_bert_pools_and_remat():
    ids, mask = batch()
    variables = bert.Bert(**bert.SIZES["tiny"]).init(jax.random.key(0), ids, mask)
    apply = lambda **kw: bert.Bert(**bert.SIZES["tiny"], **kw).apply(variables, ids, mask)
    mean, cls, pooler = apply(), apply(pool="cls"), apply(pool="pooler")
    real = mask[..., None].astype(np.float32)
    np.testing.assert_allclose(mean.pooled, (mean.tokens * real).sum(1) / real.sum(1), atol=1e-5)
    np.testing.assert_allclose(cls.pooled, mean.tokens[:, 0], atol=1e-6)
    assert np.abs(pooler.pooled).max() < 1 and not np.allclose(pooler.pooled, cls.pooled)
    np.testing.assert_allclose(apply(remat="full").tokens, mean.tokens, atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        apply(pool="first")
    with pytest.raises(ValueError, match="max_len"):
        bert.Bert(**bert.SIZES["tiny"], max_len=8).init(jax.random.key(0), ids, mask)


def test_bert_dropout_only_in_training():
    ids, mask = batch()
    model = bert.Bert(**bert.SIZES["tiny"], dropout=0.5)
    variables = model.init(jax.random.key(0), ids, mask)
    evaluated = model.apply(variables, ids, mask).pooled
    trained = model.apply(variables, ids, mask, train=True, rngs={"dropout": jax.random.key(1)}).pooled
    assert not np.allclose(trained, evaluated)


def test_bert_token_types_matter():
    ids, mask = batch()
    model = bert.Bert(**bert.SIZES["tiny"])
    variables = model.init(jax.random.key(0), ids, mask)
    second = np.broadcast_to(np.arange(12) >= 3, ids.shape).astype(np.int32)
    assert not np.allclose(model.apply(variables, ids, mask).pooled,
                           model.apply(variables, ids, mask, token_types=second).pooled)
