"""Heads on random inputs: contrastive, VTM, MLM, MVM (+ loss), caption decoders (causality, cache), QA."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_checks import assert_all_leaves_named, assert_gradients_finite_and_nonzero
from vlm_jax.models import heads
from vlm_jax.models.layers import Encoded

_keys = jax.random.split(jax.random.key(0), 8)
VIDEO = Encoded(jax.random.normal(_keys[0], (2, 6, 12)), jax.random.normal(_keys[1], (2, 12)),
                jnp.array([[True] * 6, [True] * 4 + [False] * 2]))
AUDIO = Encoded(jax.random.normal(_keys[2], (2, 3, 8)), jax.random.normal(_keys[3], (2, 8)), None)
TEXT_POOLED = jax.random.normal(_keys[4], (2, 20))
FUSED = jax.random.normal(_keys[5], (2, 5, 16))
EMBEDDING_TABLE = jax.random.normal(_keys[6], (40, 24))  # vocab 40, text width 24 != fused width 16
TOKENS = jax.random.randint(_keys[7], (2, 7), 0, 50)
DECODER = dict(vocab_size=50, width=16, depth=2, num_heads=2, mlp_dim=32)


def init_and_grad(model, *args):
    """Variables and the gradient of a random projection of the (first) output, in one jit."""
    @jax.jit
    def run():
        variables = model.init(jax.random.key(1), *args)
        loss = lambda v: sum(jnp.sum(jnp.sin(x.astype(jnp.float32)))
                             for x in jax.tree.leaves(model.apply(v, *args)))
        return variables, jax.grad(loss)(variables)
    variables, grads = run()
    assert_all_leaves_named(variables)
    assert_gradients_finite_and_nonzero(grads)
    return variables


def test_contrastive_head_unit_norm_and_clipped_scale():
    model = heads.ContrastiveHead(embed_dim=8)
    variables = init_and_grad(model, VIDEO.pooled, TEXT_POOLED)
    video, text, scale = model.apply(variables, VIDEO.pooled, TEXT_POOLED)
    assert video.shape == text.shape == (2, 8) and video.dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(video, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(text, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-5)
    params = nn.meta.unbox(variables)["params"]
    _, _, clipped = model.apply({"params": {**params, "log_scale": jnp.array(10.0)}}, VIDEO.pooled, TEXT_POOLED)
    np.testing.assert_allclose(clipped, 100.0, rtol=1e-5)


def test_contrastive_head_with_audio_adds_an_audio_projection_to_the_clip_side():
    model = heads.ContrastiveHead(embed_dim=8, use_audio=True)
    variables = init_and_grad(model, VIDEO.pooled, TEXT_POOLED, AUDIO.pooled)
    assert set(nn.meta.unbox(variables)["params"]) == {"video_projection", "audio_projection", "text_projection",
                                                      "log_scale"}
    params = nn.meta.unbox(variables)["params"]
    video_only = heads.ContrastiveHead(embed_dim=8).apply({"params": {k: v for k, v in params.items()
                                                                       if k != "audio_projection"}}, VIDEO.pooled,
                                                          method="embed_video")
    video, _, _ = model.apply(variables, VIDEO.pooled, TEXT_POOLED, AUDIO.pooled)
    np.testing.assert_array_equal(video, video_only)  # the audio projection starts at zero
    trained = {**params, "audio_projection": {"kernel": jax.random.normal(_keys[0], (8, 8))}}
    video, _, _ = model.apply({"params": trained}, VIDEO.pooled, TEXT_POOLED, AUDIO.pooled)
    np.testing.assert_allclose(jnp.linalg.norm(video, axis=-1), 1.0, rtol=1e-5)
    other_sound, _, _ = model.apply({"params": trained}, VIDEO.pooled, TEXT_POOLED, AUDIO.pooled[::-1])
    assert not np.allclose(video, other_sound)
    with pytest.raises(ValueError, match="retrieval_audio"):
        model.apply(variables, VIDEO.pooled, method=model.embed_video)


def test_matching_and_qa_heads():
    matching = heads.MatchingHead()
    logits = matching.apply(init_and_grad(matching, FUSED[:, 0]), FUSED[:, 0])
    assert logits.shape == (2,)
    qa = heads.QaHead(num_answers=10, mlp_dim=32)
    answer_logits = qa.apply(init_and_grad(qa, FUSED[:, 0]), FUSED[:, 0])
    assert answer_logits.shape == (2, 10)
    choices = jnp.array([[3, 7, -1], [0, 9, 2]])
    scored = heads.choice_logits(answer_logits, choices)
    np.testing.assert_allclose(scored[0, :2], answer_logits[0, jnp.array([3, 7])])
    np.testing.assert_allclose(scored[1], answer_logits[1, jnp.array([0, 9, 2])])
    assert scored[0, 2] == -jnp.inf


def test_mlm_head_ties_logits_to_the_embedding_table():
    model = heads.MlmHead()
    variables = init_and_grad(model, FUSED, EMBEDDING_TABLE)
    logits = model.apply(variables, FUSED, EMBEDDING_TABLE)
    assert logits.shape == (2, 5, 40)
    swapped = model.apply(variables, FUSED, EMBEDDING_TABLE[::-1])
    np.testing.assert_allclose(swapped[..., ::-1], logits, atol=1e-5)


def test_mvm_head_and_loss():
    model = heads.MvmHead(width=16, depth=1, num_heads=2, mlp_dim=32, target_dim=12)
    positions = jnp.array([[0, 5, 9], [2, 3, 11]])
    variables = init_and_grad(model, VIDEO, positions, 12)
    apply = jax.jit(lambda video, positions, mask: model.apply(variables, video, positions, 12, mask))
    pred = apply(VIDEO, positions, None)
    assert pred.shape == (2, 3, 12)
    padded_video = apply(VIDEO._replace(tokens=VIDEO.tokens.at[1, 4:].set(50.0)), positions, None)
    np.testing.assert_allclose(padded_video, pred, atol=1e-5)
    padded_targets = jnp.concatenate([positions, jnp.full((2, 1), -1)], axis=1)
    with_padding = apply(VIDEO, padded_targets, padded_targets >= 0)
    np.testing.assert_allclose(with_padding[:, :3], pred, atol=1e-5)
    assert np.isfinite(with_padding).all()

    target = jax.random.uniform(jax.random.key(3), (2, 3, 12))
    perfect = heads.normalize_patches(target)
    assert float(heads.mvm_loss(perfect, target)) < 1e-10
    assert float(heads.mvm_loss(pred, target)) > 0.1
    weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert float(heads.mvm_loss(perfect.at[0, 2].add(5.0), target, weights)) < 1e-10


@pytest.mark.parametrize("decoder, fields", [(heads.CaptionDecoder, DECODER),
                                             (heads.LinearCaptionDecoder, dict(vocab_size=50, width=16, max_len=9))])
def test_caption_decoder_is_causal_and_the_cache_matches_teacher_forcing(decoder, fields):
    model = decoder(**fields)
    variables = init_and_grad(model, TOKENS, VIDEO, AUDIO)
    params = nn.meta.unbox(variables)["params"]
    full = jax.jit(lambda tokens: model.apply({"params": params}, tokens, VIDEO, AUDIO))
    logits = full(TOKENS)
    assert logits.shape == (2, 7, 50)
    future_changed = full(TOKENS.at[:, 4:].set((TOKENS[:, 4:] + 1) % 50))
    np.testing.assert_allclose(future_changed[:, :4], logits[:, :4], atol=1e-5)
    assert np.abs(future_changed[:, 4:] - logits[:, 4:]).max() > 1e-4

    stepper = decoder(decode=True, **fields)
    cache = stepper.init_cache(params, VIDEO, AUDIO, max_len=7)
    step = jax.jit(lambda cache, token: stepper.apply({"params": params, "cache": cache}, token, VIDEO, AUDIO,
                                                      mutable=["cache"]))
    stepped = []
    for t in range(7):
        step_logits, mutated = step(cache, TOKENS[:, t:t + 1])
        cache = mutated["cache"]
        stepped.append(step_logits)
    np.testing.assert_allclose(jnp.concatenate(stepped, axis=1), logits, atol=1e-5)


def test_linear_caption_decoder_refuses_sequences_longer_than_its_positions():
    with pytest.raises(ValueError, match="exceed the linear caption decoder's max_len 6"):
        heads.LinearCaptionDecoder(vocab_size=50, width=16, max_len=6).init(jax.random.key(0), TOKENS, VIDEO)


def test_bf16_compute_runs():
    bf16 = dict(dtype=jnp.bfloat16)
    models = {
        "contrastive": (heads.ContrastiveHead(embed_dim=8, **bf16), (VIDEO.pooled, TEXT_POOLED)),
        "matching": (heads.MatchingHead(**bf16), (FUSED[:, 0],)),
        "mlm": (heads.MlmHead(**bf16), (FUSED, EMBEDDING_TABLE)),
        "mvm": (heads.MvmHead(width=16, depth=1, num_heads=2, mlp_dim=32, target_dim=12, **bf16),
                (VIDEO, jnp.array([[0, 5], [2, 3]]), 12)),
        "caption": (heads.CaptionDecoder(**DECODER, **bf16), (TOKENS, VIDEO)),
        "qa": (heads.QaHead(num_answers=10, mlp_dim=32, **bf16), (FUSED[:, 0],)),
    }

    @jax.jit
    def run():
        return {name: model.apply(model.init(jax.random.key(4), *args), *args)
                for name, (model, args) in models.items()}

    outputs = run()
    for name, out in outputs.items():
        for leaf in jax.tree.leaves(out):
            assert np.isfinite(np.asarray(leaf, np.float32)).all(), name
    assert outputs["caption"].dtype == outputs["mlm"].dtype == jnp.bfloat16
    assert math.isclose(float(outputs["contrastive"][2]), 1 / 0.07, rel_tol=1e-5)
