"""Beam search against exhaustive search on a toy model whose logits depend on the whole cached prefix,
and VLM caption generation against step-by-step argmax without a cache."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlm_jax.models import decoding, vlm

VOCAB, BOS, EOS, MAX_LEN = 5, 0, 4, 5
TABLE = np.random.default_rng(0).normal(size=(VOCAB, VOCAB)).astype(np.float32)


def toy_logits(prefix: list[int]) -> np.ndarray:
    """Logits for the next token after `prefix`; the cos term makes them depend on the whole prefix."""
    return TABLE[prefix[-1]] + 0.7 * np.cos(sum(prefix) * (np.arange(VOCAB) + 1.0))


def toy_step(tokens, cache):
    """The toy model through a cache in the decoder's layout (batch on axis 0 of [N, L, 1, 1])."""
    index = cache["cache_index"]
    history = jax.lax.dynamic_update_slice(cache["cached_key"], tokens[:, :, None, None].astype(jnp.float32),
                                           (0, index, 0, 0))
    total = history[:, :, 0, 0].sum(axis=1)
    logits = jnp.asarray(TABLE)[tokens[:, 0]] + 0.7 * jnp.cos(total[:, None] * (jnp.arange(VOCAB) + 1.0))
    return logits[:, None], {"cached_key": history, "cache_index": index + 1}


def log_softmax(x):
    return x - np.log(np.exp(x - x.max()).sum()) - x.max()


def exhaustive(alpha: float) -> tuple[list[int], float]:
    """The best sequence over every sequence that ends in EOS or reaches MAX_LEN (same banned ids)."""
    best = (None, -np.inf)
    allowed = [t for t in range(VOCAB) if t != BOS]
    for length in range(1, MAX_LEN):
        for body in itertools.product(allowed, repeat=length):
            if EOS in body[:-1]:
                continue
            seq = [BOS, *body]
            if body[-1] != EOS and len(seq) < MAX_LEN:
                continue  # unfinished and not at the length limit
            logp = sum(log_softmax(toy_logits(seq[:i]))[seq[i]] for i in range(1, len(seq)))
            score = logp / float(decoding.length_penalty(jnp.array(len(seq) - 1), alpha))
            if score > best[1]:
                best = (seq, score)
    return best


def run_toy(beam_size: int, alpha: float, batch: int = 2):
    cache = {"cached_key": jnp.zeros((batch * beam_size, MAX_LEN, 1, 1)), "cache_index": jnp.array(0)}
    search = jax.jit(lambda cache: decoding.beam_search(toy_step, cache, batch, max_len=MAX_LEN, beam_size=beam_size,
                                                        alpha=alpha, bos_id=BOS, eos_id=EOS, banned_ids=(BOS,)))
    tokens, scores = search(cache)
    return np.asarray(tokens), np.asarray(scores)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_beam_as_wide_as_the_search_space_finds_the_best_sequence(alpha):
    expected, expected_score = exhaustive(alpha)
    tokens, scores = run_toy(beam_size=(VOCAB - 1) ** (MAX_LEN - 1), alpha=alpha)
    for row, score in zip(tokens, scores):
        assert list(row[:len(expected)]) == expected and not row[len(expected):].any()
        np.testing.assert_allclose(score, expected_score, rtol=1e-5)


def test_min_len_holds_back_the_end_token():
    """With the end token made the likeliest first word, sequences still carry min_len tokens before it."""
    boosted = jnp.zeros(VOCAB).at[EOS].set(20.0)
    step = lambda tokens, cache: (lambda out: (out[0] + boosted, out[1]))(toy_step(tokens, cache))
    cache = {"cached_key": jnp.zeros((2 * 3, MAX_LEN, 1, 1)), "cache_index": jnp.array(0)}
    for min_len in (0, 2):
        tokens, _ = decoding.beam_search(step, cache, 2, max_len=MAX_LEN, beam_size=3, min_len=min_len, bos_id=BOS,
                                         eos_id=EOS, banned_ids=(BOS,))
        ends = [list(row).index(EOS) for row in np.asarray(tokens)]
        assert ends == [min_len + 1] * 2  # [BOS], min_len tokens, then the end token


def test_greedy_is_beam_size_one():
    tokens, _ = run_toy(beam_size=1, alpha=0.6)
    seq = [BOS]
    while len(seq) < MAX_LEN and seq[-1] != EOS:
        logits = toy_logits(seq)
        logits[BOS] = -np.inf
        seq.append(int(np.argmax(logits)))
    assert list(tokens[0][:len(seq)]) == seq and not tokens[0][len(seq):].any()


@pytest.fixture(scope="module")
def tiny_vlm():
    config = vlm.model_config("tiny")
    config.caption.depth = 2
    model = vlm.VLM(ml_collections.FrozenConfigDict(config), num_answers=8)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (3, 4, 32, 32, 3)).astype(np.uint8)
    audio = rng.uniform(-0.5, 0.5, (3, 4000)).astype(np.float32)
    text = np.ones((3, 6), np.int32)
    variables = jax.jit(lambda: model.init(jax.random.key(0), video, audio, text, text, text, text))()
    variables = {"params": nn.meta.unbox(variables)["params"]}
    return model, variables, video, audio


def test_greedy_captions_equal_stepwise_argmax_without_a_cache(tiny_vlm):
    model, variables, video, audio = tiny_vlm
    max_len = 6
    tokens, _ = jax.jit(lambda v, a: decoding.generate_captions(model, variables, v, a, max_len=max_len))(video, audio)
    tokens = np.asarray(tokens)
    assert tokens.shape == (3, max_len) and (tokens[:, 0] == decoding.tokenizer.CLS_ID).all()

    encoded, sound = model.apply(variables, video, audio, method=vlm.VLM.encode_video)
    # teacher forcing on the whole (zero-padded) prefix: causal, so position t sees only tokens 0..t
    full = jax.jit(lambda prefix: model.apply(variables, prefix, encoded, sound, method=vlm.VLM.caption))
    prefix = np.zeros((3, max_len), np.int32)
    prefix[:, 0] = decoding.tokenizer.CLS_ID
    for t in range(max_len - 1):
        logits = np.array(full(jnp.asarray(prefix))[:, t])
        logits[:, list(decoding.BANNED_IDS)] = -np.inf
        prefix[:, t + 1] = logits.argmax(-1)
    for row, reference in zip(tokens, prefix):
        stop = list(reference).index(decoding.tokenizer.SEP_ID) + 1 if decoding.tokenizer.SEP_ID in reference \
            else max_len
        assert list(row[:stop]) == list(reference[:stop]) and not row[stop:].any()


def test_beam_captions_stop_at_the_end_token_within_the_maximum_length(tiny_vlm):
    model, variables, video, audio = tiny_vlm
    search = jax.jit(lambda v, a: decoding.generate_captions(model, variables, v, a, max_len=5, beam_size=3))
    tokens, scores = map(np.asarray, search(video, audio))
    assert tokens.shape == (3, 5) and np.isfinite(scores).all()
    for row in tokens:
        if decoding.tokenizer.SEP_ID in row:
            end = list(row).index(decoding.tokenizer.SEP_ID)
            assert not row[end + 1:].any()
        assert not set(row[1:]) & (set(decoding.BANNED_IDS) - {decoding.tokenizer.PAD_ID})
