"""Fusion modules on random towers of different widths: shapes, jit, vmap, gradients, logical axes, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import assert_all_leaves_named, assert_gradients_finite_and_nonzero
from vlm_jax.models.fusion import FUSIONS, Fused, concat_tokens
from vlm_jax.models.layers import Encoded

SMALL = dict(width=16, depth=1, num_heads=2, mlp_dim=32)
_keys = jax.random.split(jax.random.key(0), 6)
VIDEO = Encoded(jax.random.normal(_keys[0], (2, 6, 12)), jax.random.normal(_keys[1], (2, 12)),
                jnp.array([[True] * 6, [True] * 4 + [False] * 2]))
TEXT = Encoded(jax.random.normal(_keys[2], (2, 5, 20)), jax.random.normal(_keys[3], (2, 20)),
               jnp.array([[True] * 5, [True] * 3 + [False] * 2]))
AUDIO = Encoded(jax.random.normal(_keys[4], (2, 3, 8)), jax.random.normal(_keys[5], (2, 8)), None)


def test_concat_tokens_masks():
    ones = jnp.ones((2, 3, 4))
    assert concat_tokens([(ones, None), (ones, None)])[1] is None
    tokens, mask = concat_tokens([(ones, None), (ones, jnp.array([[1, 0, 0], [1, 1, 1]]))])
    assert tokens.shape == (2, 6, 4) and mask.dtype == bool
    np.testing.assert_array_equal(mask[0], [True] * 4 + [False] * 2)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_fusion(name):
    """With and without audio: shapes, gradients, vmap, padding, bf16; all inside one jit, so each fusion
    compiles once."""
    model = FUSIONS[name](**SMALL)
    bf16_model = FUSIONS[name](dtype=jnp.bfloat16, **SMALL)
    probe = jax.random.normal(jax.random.key(2), (2, 5, 16))
    variants = [  # original; padded video and text tokens changed; real video tokens changed
        (VIDEO, TEXT),
        (VIDEO._replace(tokens=VIDEO.tokens.at[1, 4:].set(50.0)),
         TEXT._replace(tokens=TEXT.tokens.at[1, 3:].set(-50.0))),
        (VIDEO._replace(tokens=VIDEO.tokens + 1.0), TEXT),
    ]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *variants)

    @jax.jit
    def run(stacked):
        results = {}
        for audio in (AUDIO, None):
            variables = model.init(jax.random.key(1), VIDEO, TEXT, audio)

            def loss(v):
                out = model.apply(v, VIDEO, TEXT, audio)
                return jnp.sum(out.tokens * probe) + jnp.sum(out.pooled * probe[:, 0]), out

            (_, out), grads = jax.value_and_grad(loss, has_aux=True)(variables)
            mapped = jax.vmap(lambda video, text: model.apply(variables, video, text, audio))(*stacked)
            results[audio is not None] = variables, out, grads, mapped
        return results, bf16_model.apply(results[True][0], VIDEO, TEXT, AUDIO)

    results, bf16_out = run(stacked)
    for with_audio, (variables, out, grads, mapped) in results.items():
        case = f"{name}, audio={with_audio}"
        assert_all_leaves_named(variables)
        assert isinstance(out, Fused)
        assert out.tokens.shape == (2, 5, 16) and out.pooled.shape == (2, 16), case
        assert_gradients_finite_and_nonzero(grads)
        np.testing.assert_allclose(mapped.tokens[0], out.tokens, atol=1e-5, err_msg=case)
        np.testing.assert_allclose(mapped.pooled[0], out.pooled, atol=1e-5, err_msg=case)
        # padded video and text tokens are invisible at every real position and in the pooled vector
        np.testing.assert_allclose(mapped.tokens[1, :, :3], out.tokens[:, :3], atol=1e-5, err_msg=case)
        np.testing.assert_allclose(mapped.pooled[1], out.pooled, atol=1e-5, err_msg=case)
        # real video tokens reach the text tokens only in the token-level fusions
        token_level = name in ("concat_early", "cross_attention", "co_attention")
        assert (np.abs(mapped.tokens[2] - out.tokens).max() > 1e-4) == token_level, case
    assert bf16_out.tokens.dtype == jnp.bfloat16 and bf16_out.pooled.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16_out.pooled, np.float32), results[True][1].pooled, atol=0.1)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_several_texts_per_clip_equal_the_clip_repeated(name):
    """Two texts per clip (clip-major rows) give what the clip's video and audio repeated for each text give;
    cross-attention reads one copy of them for both texts."""
    model = FUSIONS[name](**SMALL)
    variables = jax.jit(model.init)(jax.random.key(1), VIDEO, TEXT, AUDIO)
    texts = jax.tree.map(lambda x: jnp.concatenate([x, x[::-1]]), TEXT)  # clip 0: texts 0, 1; clip 1: 1, 0
    grouped = jax.jit(model.apply)(variables, VIDEO, texts, AUDIO)
    repeat = lambda e: Encoded(*(None if x is None else jnp.repeat(x, 2, axis=0) for x in e))
    repeated = jax.jit(model.apply)(variables, repeat(VIDEO), texts, repeat(AUDIO))
    np.testing.assert_allclose(grouped.pooled, repeated.pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grouped.tokens, repeated.tokens, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_clip_rows_equal_the_clips_taken(name):
    """Texts paired with clips by `clip_rows` (clips repeated, reordered, one left out) give what those clips'
    video and audio taken row by row give; with a mask, so padded context rows follow their clip."""
    model = FUSIONS[name](**SMALL)
    variables = jax.jit(model.init)(jax.random.key(1), VIDEO, TEXT, AUDIO)
    clip_rows = jnp.array([1, 0, 1, 1])
    texts = jax.tree.map(lambda x: jnp.concatenate([x, x[::-1]]), TEXT)
    paired = jax.jit(lambda v, rows: model.apply(v, VIDEO, texts, AUDIO, clip_rows=rows))(variables, clip_rows)
    take = lambda e: Encoded(*(None if x is None else jnp.take(x, clip_rows, axis=0) for x in e))
    taken = jax.jit(model.apply)(variables, take(VIDEO), texts, take(AUDIO))
    np.testing.assert_allclose(paired.pooled, taken.pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(paired.tokens, taken.tokens, rtol=1e-5, atol=1e-5)
