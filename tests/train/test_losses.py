"""Loss functions on hand-computed examples: values, masks, metrics, masking statistics, finite gradients.

Inputs are numpy and every call goes through `jax.jit`: one compile per call site is much faster on CPU
than eager op-by-op dispatch, and it checks that each function traces.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlm_jax.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from vlm_jax.models import heads
from vlm_jax.models.video.vivit import patchify
from vlm_jax.train import losses

contrastive_loss = jax.jit(losses.contrastive_loss)
mine_hard_negatives = jax.jit(losses.mine_hard_negatives)
matching_loss = jax.jit(losses.matching_loss)
mask_tokens = jax.jit(losses.mask_tokens, static_argnames=("ratio", "vocab_size"))
mlm_loss = jax.jit(losses.mlm_loss)
mvm_loss = jax.jit(losses.mvm_loss)
caption_loss = jax.jit(losses.caption_loss)
qa_loss = jax.jit(losses.qa_loss)
choice_loss = jax.jit(losses.choice_loss)
RNG = np.random.default_rng(0)


def mask_cubes(video, rng, tubelet, ratio):
    """losses.mask_cubes under jit (num_cubes is a static Python int, read from the trace)."""
    static = {}

    def arrays(video, rng):
        masked, positions, static["num_cubes"] = losses.mask_cubes(video, rng, tubelet, ratio)
        return masked, positions
    masked, positions = jax.jit(arrays)(video, rng)
    return masked, positions, static["num_cubes"]


def _ce(logits, label):
    """Cross-entropy of one row, by hand in float64."""
    logits = np.asarray(logits, np.float64)
    return math.log(np.exp(logits).sum()) - logits[label]


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def one_hot(labels, n, scale=1.0):
    return (scale * np.eye(n, dtype=np.float32)[np.asarray(labels)]).astype(np.float32)


def grad(fn, argnums=0):
    """jit(grad) of fn's loss (its first output)."""
    return jax.jit(jax.grad(lambda *a: fn(*a)[0], argnums=argnums))


def assert_finite_grad(fn, *args):
    """The gradient of fn's loss with respect to every float array argument is finite."""
    floats = tuple(i for i, a in enumerate(args) if np.issubdtype(np.asarray(a).dtype, np.floating))
    for g in jax.tree.leaves(grad(fn, floats)(*args)):
        assert np.all(np.isfinite(np.asarray(g))), g


# ------------------------------------------------------------------------------------------ contrastive

def test_contrastive_2x2_by_hand_and_metrics():
    video = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    text = np.array([[0.6, 0.8], [0.0, 1.0]], np.float32)
    loss, metrics = contrastive_loss(video, text, 2.0)
    sim = 2.0 * np.array([[0.6, 0.0], [0.8, 1.0]])  # video i . text j
    v2t = (_ce(sim[0], 0) + _ce(sim[1], 1)) / 2
    t2v = (_ce(sim[:, 0], 0) + _ce(sim[:, 1], 1)) / 2
    np.testing.assert_allclose(loss, (v2t + t2v) / 2, rtol=1e-6)
    # rows: argmax(0.6, 0) = 0 ok, argmax(0.8, 1.0) = 1 ok; columns: argmax(0.6, 0.8) = 1 wrong, (0, 1) ok
    assert float(metrics["v2t_acc"]) == 1.0 and float(metrics["t2v_acc"]) == 0.5
    assert_finite_grad(contrastive_loss, video, text, 2.0)


def test_contrastive_perfect_is_zero_and_valid_mask_exact():
    eye = np.eye(3, dtype=np.float32)
    loss, metrics = contrastive_loss(eye, eye, 100.0)
    assert float(loss) < 1e-6 and float(metrics["v2t_acc"]) == 1.0 == float(metrics["t2v_acc"])
    video, text = normal(4, 5), normal(4, 5)
    valid = np.array([True, False, True, True])
    keep = np.array([0, 2, 3])
    masked, masked_metrics = contrastive_loss(video, text, 1.5, valid)
    subset, subset_metrics = contrastive_loss(video[keep], text[keep], 1.5)
    np.testing.assert_allclose(masked, subset, rtol=1e-6)
    assert {k: float(v) for k, v in masked_metrics.items()} == pytest.approx(
        {k: float(v) for k, v in subset_metrics.items()})
    # the invalid example gets no gradient, and garbage (NaN/inf) in it cannot leak
    grads = grad(lambda v, t: losses.contrastive_loss(v, t, 1.5, valid), (0, 1))(video, text)
    assert np.all(np.asarray(grads[0][1]) == 0) and np.all(np.asarray(grads[1][1]) == 0)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_hard_negatives_exclude_diagonal_and_prefer_similar():
    batch = 6
    # each video i is very similar to text (i + 1) % B, moderately to everything else, most to itself
    similarity = 3.0 * np.roll(np.eye(batch, dtype=np.float32), 1, axis=1) + 10.0 * np.eye(batch, dtype=np.float32)
    keys = jax.random.split(jax.random.key(0), 300)
    mine_many = jax.jit(jax.vmap(losses.mine_hard_negatives, in_axes=(None, 0, None)))
    text_idx, video_idx = mine_many(similarity, keys, None)
    rows = np.arange(batch)
    assert text_idx.dtype == jnp.int32
    assert not np.any(np.asarray(text_idx) == rows) and not np.any(np.asarray(video_idx) == rows)
    # softmax over the 5 off-diagonal entries: e^3 / (e^3 + 4) = 0.834
    expected = math.exp(3) / (math.exp(3) + 4)
    assert np.mean(np.asarray(text_idx) == (rows + 1) % batch) == pytest.approx(expected, abs=0.04)
    assert np.mean(np.asarray(video_idx) == (rows - 1) % batch) == pytest.approx(expected, abs=0.04)
    # deterministic given the rng
    again = mine_hard_negatives(similarity, keys[0])
    np.testing.assert_array_equal(again[0], text_idx[0])
    # invalid examples are never chosen (when a valid alternative exists)
    valid = np.array([True, True, False, True, True, True])
    masked_text, masked_video = mine_many(similarity, keys, valid)
    assert not np.any(np.asarray(masked_text) == 2) and not np.any(np.asarray(masked_video) == 2)
    assert not np.any(np.asarray(masked_text) == rows) and not np.any(np.asarray(masked_video) == rows)


# ------------------------------------------------------------------------------------------ matching

def test_matching_loss_by_hand_balanced_and_masked():
    pos, neg = np.array([2.0, -1.0], np.float32), np.array([-3.0, 0.5, 1.0, -2.0], np.float32)
    loss, metrics = matching_loss(pos, neg)
    softplus = lambda x: math.log1p(math.exp(x))
    pos_term = (softplus(-2.0) + softplus(1.0)) / 2
    neg_term = (softplus(-3.0) + softplus(0.5) + softplus(1.0) + softplus(-2.0)) / 4
    np.testing.assert_allclose(loss, (pos_term + neg_term) / 2, rtol=1e-6)
    assert float(metrics["pos_acc"]) == 0.5 and float(metrics["neg_acc"]) == 0.5
    assert float(metrics["accuracy"]) == 0.5
    perfect, perfect_metrics = matching_loss(np.array([30.0, 40.0]), np.array([-30.0]))
    assert float(perfect) < 1e-6 and float(perfect_metrics["accuracy"]) == 1.0
    masked, _ = matching_loss(pos, neg, np.array([True, False]), np.array([True, False, False, True]))
    np.testing.assert_allclose(masked, (softplus(-2.0) + (softplus(-3.0) + softplus(-2.0)) / 2) / 2, rtol=1e-6)
    assert_finite_grad(matching_loss, pos, neg)


# ------------------------------------------------------------------------------------------ MLM

def _text_batch(rows, length, key):
    """Rows of [CLS] words [SEP] PAD..., with random lengths (some rows all padding but CLS/SEP)."""
    rng = np.random.default_rng(key)
    ids = np.full((rows, length), PAD_ID, np.int32)
    for r in range(rows):
        words = int(rng.integers(0, length - 1))
        ids[r, 0] = CLS_ID
        ids[r, 1:1 + words] = rng.integers(1000, 30000, words)
        ids[r, 1 + words] = SEP_ID
    return ids, (ids != PAD_ID).astype(np.int32)


def test_mask_tokens_never_touches_specials_and_splits_80_10_10():
    ids, mask = _text_batch(2048, 24, 0)
    masked, targets = mask_tokens(ids, mask, jax.random.key(3))
    ids, masked, targets = np.asarray(ids), np.asarray(masked), np.asarray(targets)
    selected = targets >= 0
    special = np.isin(ids, [PAD_ID, CLS_ID, SEP_ID])
    assert not np.any(selected & special)
    np.testing.assert_array_equal(masked[~selected], ids[~selected])  # untouched outside the targets
    np.testing.assert_array_equal(targets[selected], ids[selected])
    words = (~special).sum(1)
    expected = np.where(words > 0, np.maximum(1, np.round(0.15 * words)), 0)
    np.testing.assert_array_equal(selected.sum(1), expected)  # exact count, >= 1 per row with words
    n = selected.sum()
    as_mask = np.mean(masked[selected] == MASK_ID)
    kept = np.mean(masked[selected] == ids[selected])
    random = 1 - as_mask - kept
    assert n > 3000
    assert as_mask == pytest.approx(0.8, abs=0.03)
    assert kept == pytest.approx(0.1, abs=0.025) and random == pytest.approx(0.1, abs=0.025)
    assert np.all(masked[selected & (masked != MASK_ID)] > MASK_ID)  # random ids are never special


def test_mask_tokens_deterministic_given_rng():
    ids, mask = _text_batch(4, 10, 1)
    a = mask_tokens(ids, mask, jax.random.key(0))
    b = mask_tokens(ids, mask, jax.random.key(0))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_mlm_loss_by_hand_and_perfect():
    logits = np.array([[[1.0, 2.0, 0.0], [5.0, 0.0, 0.0]], [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]], np.float32)
    targets = np.array([[1, -1], [0, -1]], np.int32)
    loss, metrics = mlm_loss(logits, targets)
    np.testing.assert_allclose(loss, (_ce([1, 2, 0], 1) + _ce([0, 0, 3], 0)) / 2, rtol=1e-6)
    assert float(metrics["accuracy"]) == 0.5
    perfect, perfect_metrics = mlm_loss(one_hot([[2, 0]], 3, 100.0), np.array([[2, -1]]))
    assert float(perfect) < 1e-6 and float(perfect_metrics["accuracy"]) == 1.0
    none, _ = mlm_loss(logits, -np.ones((2, 2), np.int32))
    assert float(none) == 0.0
    assert_finite_grad(mlm_loss, logits, targets)


# ------------------------------------------------------------------------------------------ MVM

def test_mask_cubes_positions_and_pixels():
    video = RNG.integers(1, 256, (3, 4, 8, 8, 3)).astype(np.uint8)
    tubelet = (2, 4, 4)  # 2 x 2 x 2 = 8 cubes
    masked, positions, num_cubes = mask_cubes(video, jax.random.key(1), tubelet, 0.4)
    assert num_cubes == 8 and positions.shape == (3, 3) and positions.dtype == jnp.int32  # round(3.2) = 3
    positions = np.asarray(positions)
    assert np.all((positions >= 0) & (positions < 8))
    assert all(len(set(row)) == 3 and list(row) == sorted(row) for row in positions)
    assert len({tuple(row) for row in positions}) > 1  # drawn per example
    assert masked.dtype == jnp.float32 and masked.shape == video.shape
    original = np.asarray(patchify(video.astype(np.float32) * (2 / 255) - 1, tubelet))  # numpy in, numpy out
    cubes = np.asarray(patchify(masked, tubelet))
    for b in range(3):
        hidden = np.isin(np.arange(8), positions[b])
        assert np.all(cubes[b, hidden] == 0.0)
        np.testing.assert_array_equal(cubes[b, ~hidden], np.asarray(original[b, ~hidden]))
        assert np.all(np.asarray(original[b]) != 0.0)  # so the zeros really are the mask
    # uint8 and its [-1, 1] float give the same result; targets are the unmasked cubes
    same, _, _ = mask_cubes(video.astype(np.float32) * (2 / 255) - 1, jax.random.key(1), tubelet, 0.4)
    np.testing.assert_allclose(same, masked)
    targets = jax.jit(losses.mvm_targets, static_argnums=2)(video, positions, tubelet)
    assert targets.shape == (3, 3, 2 * 4 * 4 * 3)
    np.testing.assert_array_equal(targets[1], original[1, positions[1]])
    # at least one cube; a ratio outside [0, 1] is an error
    _, one, _ = mask_cubes(video, jax.random.key(2), tubelet, 0.0)
    assert one.shape == (3, 1)
    with pytest.raises(ValueError):
        mask_cubes(video, jax.random.key(2), tubelet, 1.5)


def test_mvm_loss_uses_normalised_targets():
    targets = normal(2, 3, 12)
    centred = targets - targets.mean(-1, keepdims=True)
    loss, metrics = mvm_loss(centred / np.sqrt(np.square(centred).mean(-1, keepdims=True) + 1e-6), targets)
    assert float(loss) < 1e-8 and float(metrics["mse"]) == float(loss)
    pred = np.zeros((2, 3, 12), np.float32)
    np.testing.assert_allclose(mvm_loss(pred, targets)[0], 1.0, rtol=1e-4)  # unit variance per patch
    assert_finite_grad(mvm_loss, pred, targets)


# ------------------------------------------------------------------------------------------ captioning

def test_caption_loss_shifts_and_ignores_padding():
    tokens = np.array([[CLS_ID, 5, SEP_ID, PAD_ID]])
    mask = np.array([[1, 1, 1, 0]])
    vocab = 110
    logits = normal(1, 4, vocab)
    loss, metrics = caption_loss(logits, tokens, mask, label_smoothing=0.0)
    z = np.asarray(logits[0])
    expected = (_ce(z[0], 5) + _ce(z[1], SEP_ID)) / 2  # position 0 predicts 5, position 1 predicts [SEP]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll"], expected, rtol=1e-5)
    # padding: whatever the logits at the last two positions, nothing changes
    noisy = logits.copy()
    noisy[:, 2:] = 1e3 * normal(1, 2, vocab)
    np.testing.assert_allclose(caption_loss(noisy, tokens, mask, 0.0)[0], loss, rtol=1e-6)
    # perfect teacher-forced predictions
    perfect = one_hot([[5, SEP_ID, 0, 0]], vocab, 100.0)
    p_loss, p_metrics = caption_loss(perfect, tokens, mask, 0.0)
    assert float(p_loss) < 1e-6 and float(p_metrics["accuracy"]) == 1.0
    assert_finite_grad(lambda l: losses.caption_loss(l, tokens, mask), logits)


def test_caption_label_smoothing_matches_optax():
    tokens = np.array([[CLS_ID, 7, 9, SEP_ID], [CLS_ID, SEP_ID, PAD_ID, PAD_ID]])
    mask = (tokens != PAD_ID).astype(np.int32)
    logits = normal(2, 4, 120)
    loss, _ = caption_loss(logits, tokens, mask, label_smoothing=0.1)

    @jax.jit
    def reference(logits):
        labels = optax.smooth_labels(jax.nn.one_hot(tokens[:, 1:], 120), 0.1)
        per_token = optax.softmax_cross_entropy(logits[:, :-1], labels)
        return jnp.sum(per_token * mask[:, 1:]) / jnp.sum(mask[:, 1:])
    np.testing.assert_allclose(loss, reference(logits), rtol=1e-5)


# ------------------------------------------------------------------------------------------ QA

def test_qa_loss_by_hand_and_masks():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    answers = np.array([0, 2, -1])  # third: answer outside the vocabulary
    valid = np.array([True, True, True])
    loss, metrics = qa_loss(logits, answers, valid)
    np.testing.assert_allclose(loss, (_ce([2, 0, 1], 0) + _ce([0, 3, 0], 2)) / 2, rtol=1e-6)
    assert float(metrics["accuracy"]) == 0.5
    only_first, m = qa_loss(logits, answers, np.array([True, False, True]))
    np.testing.assert_allclose(only_first, _ce([2, 0, 1], 0), rtol=1e-6)
    assert float(m["accuracy"]) == 1.0
    perfect, pm = qa_loss(one_hot([1, 2], 3, 100.0), np.array([1, 2]), None)
    assert float(perfect) < 1e-6 and float(pm["accuracy"]) == 1.0
    assert_finite_grad(lambda l: losses.qa_loss(l, answers, valid), logits)


def test_choice_loss_no_nan_from_inf_padding():
    answer_logits = np.array([[1.0, 2.0, 3.0, 4.0]] * 4, np.float32)
    choices = np.array([[0, 2, -1], [3, 1, 2], [-1, -1, -1], [1, -1, -1]])
    choice_answer = np.array([1, 0, -1, 1])  # row 2: all padding; row 3: label on a padded choice
    valid = np.array([True, True, False, True])

    @jax.jit
    def loss_of(answer_logits, valid):
        return losses.choice_loss(heads.choice_logits(answer_logits, choices), choice_answer, valid)

    loss, metrics = loss_of(answer_logits, valid)
    expected = (_ce([1, 3], 1) + _ce([4, 2, 3], 0)) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert float(metrics["accuracy"]) == 1.0
    grads = np.asarray(grad(loss_of)(answer_logits, valid))
    assert np.all(np.isfinite(grads))
    assert np.all(grads[2:] == 0)  # excluded rows get no gradient
    # even marked valid, an all-padding row or a label on a padded choice is excluded rather than NaN
    all_valid, _ = loss_of(answer_logits, np.ones(4, bool))
    np.testing.assert_allclose(all_valid, expected, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad(loss_of)(answer_logits, np.ones(4, bool)))))
