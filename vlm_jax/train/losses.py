"""Pure loss functions for pretraining and finetuning, and the masking that feeds them.

Every function here is a pure function of arrays (plus an explicit rng where it samples): no flax modules,
no hidden state. Losses upcast to float32 and return `(loss, metrics)`, a scalar and a dict of scalars;
metrics never carry gradients (they come from argmax / comparisons).

Conventions shared by all losses:
- **Validity masks exclude exactly.** An example whose `valid` is False contributes nothing to the loss, its
  gradient or its metrics; a weighted mean divides by max(#valid, 1), so an all-invalid batch gives 0, not NaN.
- **Global batch.** Under `jax.jit` with inputs sharded over the data axes the arrays seen here are the
  global arrays; cross-example terms (the contrastive similarity matrix, hard-negative mining) therefore span
  the whole global batch and GSPMD inserts the all-gathers itself. No `pmap`/`psum` plumbing is needed, and
  the result is the same on 1 device or many.
- **No NaN from -inf.** Logits that are -inf on padding (e.g. `heads.choice_logits`) are fine where the label
  entry is finite; rows where it is not are treated as invalid and their logits replaced before any
  log-sum-exp, so neither the value nor the gradient can turn NaN (0 * NaN would still be NaN).

Masking (`mask_tokens`, `mask_cubes`) and hard-negative mining are here too because they define the targets
of the losses; they are deterministic given the rng.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from vlm_jax.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, VOCAB_SIZE
from vlm_jax.models import heads, layers
from vlm_jax.models.video.vivit import gather_tokens, patchify, random_keep, tubelet_grid

Metrics = dict[str, jax.Array]


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(values * weights) / max(sum(weights), 1) in float32."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _as_valid(valid: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
    return jnp.ones(shape, jnp.bool_) if valid is None else jnp.asarray(valid).astype(jnp.bool_)


def _integer_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, Metrics]:
    """Weighted-mean integer-label cross-entropy and accuracy over [..., N] logits.

    Rows with weight 0 have their logits replaced by zeros and their label by 0 first, so padding labels (-1)
    and all -inf rows cannot produce NaN in the value or the gradient.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.bool_)
    labels = jnp.where(weights, labels, 0)
    logits = jnp.where(weights[..., None], logits, 0.0)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, axis=-1) == labels
    return _weighted_mean(per_example, weights), {"accuracy": _weighted_mean(correct, weights)}


# --------------------------------------------------------------------------------------------- contrastive

def contrastive_loss(video_emb: jax.Array, text_emb: jax.Array, scale: jax.Array | float,
                     valid: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """Symmetric InfoNCE (CLIP) over the batch's similarity matrix.

    video_emb, text_emb: [B, E] (normally unit-norm, from `VLM.embed`); scale: the logit scale (1/temperature).
    logits = scale * video_emb @ text_emb.T; example i's positive is column i. The loss is the mean of the
    video->text (rows) and text->video (columns) cross-entropies.

    The batch is the GLOBAL batch: under `jax.jit` with B sharded across devices, GSPMD gathers the other
    devices' embeddings to form the [B, B] matrix, so every example is contrasted with every other one, as
    CLIP does with its all-gather, and the loss is identical to the single-device one. (This relies on the
    mesh's `Auto` axes, as `parallel.make_mesh` builds; under `Explicit` axes the [B@data, B@data] product
    is rejected and the caller would have to reshard one side first.)

    valid [B] (optional): invalid examples are removed from both softmaxes (their columns/rows are -inf) and
    from the means, exactly as if they were not in the batch.

    Metrics: v2t_acc / t2v_acc, the fraction of valid rows / columns whose argmax is the diagonal.
    """
    batch = video_emb.shape[0]
    valid = _as_valid(valid, (batch,))
    logits = jnp.asarray(scale, jnp.float32) * jnp.einsum(
        "ie,je->ij", video_emb.astype(jnp.float32), text_emb.astype(jnp.float32))
    pair_ok = valid[:, None] & valid[None, :]
    labels = jnp.arange(batch)
    # invalid partners -> -inf (exactly excluded); rows of invalid examples -> 0 (ignored, weight 0)
    v2t = jnp.where(valid[:, None], jnp.where(pair_ok, logits, -jnp.inf), 0.0)
    t2v = jnp.where(valid[:, None], jnp.where(pair_ok.T, logits.T, -jnp.inf), 0.0)
    loss_v2t, acc_v2t = _integer_cross_entropy(v2t, labels, valid)
    loss_t2v, acc_t2v = _integer_cross_entropy(t2v, labels, valid)
    return 0.5 * (loss_v2t + loss_t2v), {"v2t_acc": acc_v2t["accuracy"], "t2v_acc": acc_t2v["accuracy"]}


def mine_hard_negatives(similarity: jax.Array, rng: jax.Array,
                        valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """One hard negative per video and per text, sampled in proportion to softmax(similarity) (ALPRO / BLIP).

    similarity: [B, B], video i x text j (pass the scaled contrastive logits, so the temperature sets how
    hard). The diagonal (the positive) and invalid examples are excluded; sampling is stop-gradient and
    deterministic given `rng`. Returns (text index for each video [B], video index for each text [B]), int32.

    A row with no valid candidate (e.g. only one valid example) falls back to a uniform draw over the other
    indices, so the diagonal is never returned when B >= 2. The pair (i, neg[i]) is a usable negative iff
    valid[i] & valid[neg[i]] -- callers mask the matching loss with that.
    """
    batch = similarity.shape[0]
    similarity = jax.lax.stop_gradient(similarity.astype(jnp.float32))
    valid = _as_valid(valid, (batch,))
    off_diagonal = ~jnp.eye(batch, dtype=jnp.bool_)

    def sample(key: jax.Array, scores: jax.Array) -> jax.Array:
        candidates = off_diagonal & valid[None, :]
        has_candidate = jnp.any(candidates, axis=1, keepdims=True)
        logits = jnp.where(candidates, scores, -jnp.inf)
        logits = jnp.where(has_candidate, logits, jnp.where(off_diagonal, 0.0, -jnp.inf))
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

    key_text, key_video = jax.random.split(rng)
    return sample(key_text, similarity), sample(key_video, similarity.T)


# --------------------------------------------------------------------------------------------- matching

def matching_loss(pos_logits: jax.Array, neg_logits: jax.Array, pos_valid: jax.Array | None = None,
                  neg_valid: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """Video-text matching: binary cross-entropy, positives [B] labelled 1, negatives [M] labelled 0.

    Balanced: the mean over valid positives and the mean over valid negatives are averaged with equal weight
    (a set with no valid entry drops out), so the loss does not depend on how many negatives were mined.
    Metrics: pos_acc, neg_acc (logit > 0 / < 0) and accuracy, their balanced mean.
    """
    pos_valid = _as_valid(pos_valid, pos_logits.shape)
    neg_valid = _as_valid(neg_valid, neg_logits.shape)
    pos_logits, neg_logits = pos_logits.astype(jnp.float32), neg_logits.astype(jnp.float32)
    pos_loss = _weighted_mean(optax.sigmoid_binary_cross_entropy(pos_logits, jnp.ones_like(pos_logits)), pos_valid)
    neg_loss = _weighted_mean(optax.sigmoid_binary_cross_entropy(neg_logits, jnp.zeros_like(neg_logits)), neg_valid)
    pos_acc = _weighted_mean(pos_logits > 0, pos_valid)
    neg_acc = _weighted_mean(neg_logits < 0, neg_valid)
    present = jnp.stack([jnp.any(pos_valid), jnp.any(neg_valid)]).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(present), 1.0)
    loss = (present[0] * pos_loss + present[1] * neg_loss) / count
    accuracy = (present[0] * pos_acc + present[1] * neg_acc) / count
    return loss, {"accuracy": accuracy, "pos_acc": pos_acc, "neg_acc": neg_acc}


# --------------------------------------------------------------------------------------------- MLM

def mask_tokens(ids: jax.Array, mask: jax.Array, rng: jax.Array, ratio: float = 0.15,
                vocab_size: int = VOCAB_SIZE) -> tuple[jax.Array, jax.Array]:
    """BERT masking: choose tokens to predict, then replace 80% by [MASK], 10% by a random token, keep 10%.

    ids, mask: [B, L] (mask nonzero on real tokens). PAD, [CLS] and [SEP] are never chosen. As in BERT's
    original data generation, each row predicts exactly max(1, round(ratio * n)) of its n candidate tokens
    (uniformly at random), so every row with a real token predicts at least one. Random replacements are drawn
    from ids above [MASK] (never a special token or padding).

    Returns (masked_ids [B, L] int32, targets [B, L] int32: the original id where predicted, -1 elsewhere).
    """
    ids = jnp.asarray(ids).astype(jnp.int32)
    candidates = (jnp.asarray(mask) != 0) & (ids != PAD_ID) & (ids != CLS_ID) & (ids != SEP_ID)
    key_pick, key_action, key_token = jax.random.split(rng, 3)
    count = jnp.sum(candidates, axis=1, keepdims=True).astype(jnp.float32)
    to_predict = jnp.maximum(1, jnp.round(ratio * count)).astype(jnp.int32)
    noise = jnp.where(candidates, jax.random.uniform(key_pick, ids.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    selected = candidates & (rank < to_predict)
    action = jax.random.uniform(key_action, ids.shape)
    random_ids = jax.random.randint(key_token, ids.shape, MASK_ID + 1, vocab_size, jnp.int32)
    replaced = jnp.where(action < 0.8, MASK_ID, jnp.where(action < 0.9, random_ids, ids))
    masked_ids = jnp.where(selected, replaced, ids)
    return masked_ids, jnp.where(selected, ids, -1)


def mlm_loss(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, Metrics]:
    """Cross-entropy over the predicted positions (targets >= 0) of logits [..., V]; metric: accuracy."""
    return _integer_cross_entropy(logits, targets, targets >= 0)


# --------------------------------------------------------------------------------------------- MVM

def num_masked_cubes(num_cubes: int, ratio: float) -> int:
    """M = max(1, round(ratio * num_cubes)), the number of cubes `mask_cubes` masks per example."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    return max(1, round(ratio * num_cubes))


def mask_cubes(video: jax.Array, rng: jax.Array, tubelet: tuple[int, int, int],
               ratio: float) -> tuple[jax.Array, jax.Array, int]:
    """Mask M = max(1, round(ratio * num_cubes)) random cubes (tubelets) per example, for masked video modelling.

    video: [B, T, H, W, 3] uint8 or float in [-1, 1]. Returns
      masked_video: float32 in [-1, 1] (uint8 is converted as `VLM.encode_video` does), the masked cubes set
        to 0.0 -- mid grey, the centre of the pixel range, so masking adds no brightness bias;
      positions: [B, M] int32, distinct, ascending flat cube indices in `patchify` token order;
      num_cubes: the (static) number of cubes, for `VLM.mvm`.
    """
    grid = tubelet_grid(video.shape, tuple(tubelet))
    num_cubes = math.prod(grid)
    masked = num_masked_cubes(num_cubes, ratio)
    batch = video.shape[0]
    positions = random_keep(rng, batch, 1, num_cubes, masked)[:, 0]
    cube_masked = jnp.zeros((batch, num_cubes), jnp.bool_).at[jnp.arange(batch)[:, None], positions].set(True)
    pixels = layers.to_unit_range(video)
    (grid_t, grid_h, grid_w), (step_t, step_h, step_w) = grid, tuple(tubelet)
    shaped = pixels.reshape(batch, grid_t, step_t, grid_h, step_h, grid_w, step_w, pixels.shape[-1])
    hide = cube_masked.reshape(batch, grid_t, 1, grid_h, 1, grid_w, 1, 1)
    return jnp.where(hide, 0.0, shaped).reshape(pixels.shape), positions, num_cubes


def mvm_targets(video: jax.Array, positions: jax.Array, tubelet: tuple[int, int, int]) -> jax.Array:
    """The raw pixels (in [-1, 1]) of the cubes at `positions` [B, M] of the UNMASKED video: [B, M, t*h*w*3],
    flattened as `patchify` does. `heads.mvm_loss` normalises them per patch."""
    return gather_tokens(patchify(layers.to_unit_range(video), tuple(tubelet)), positions)


def mvm_loss(pred: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """`heads.mvm_loss` (MSE to per-patch normalised targets) with the (loss, metrics) signature of the others."""
    loss = heads.mvm_loss(pred, targets, weights)
    return loss, {"mse": loss}


# --------------------------------------------------------------------------------------------- captioning

def caption_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array,
                 label_smoothing: float = 0.1) -> tuple[jax.Array, Metrics]:
    """Teacher-forced captioning loss: logits[:, t] predict tokens[:, t + 1]; padding (mask 0) is ignored.

    logits [B, L, V] from `VLM.caption(tokens, ...)`, tokens/mask [B, L] ([CLS] ... [SEP] then padding), so the
    model learns every word and the closing [SEP] (its end-of-sequence) and never predicts [CLS].

    Cross-entropy with optax-style label smoothing (targets (1 - a) * one_hot + a / V), computed in closed
    form, lse(z) - (1 - a) * z_y - a * mean(z), which equals `optax.softmax_cross_entropy(z,
    optax.smooth_labels(one_hot, a))` without materialising a [B, L, V] one-hot.
    Metrics: accuracy (next-token argmax) and nll (the unsmoothed cross-entropy).
    """
    z = logits[:, :-1].astype(jnp.float32)
    targets = jnp.asarray(tokens)[:, 1:].astype(jnp.int32)
    weights = jnp.asarray(mask)[:, 1:] != 0
    targets = jnp.where(weights, targets, 0)
    log_normalizer = jax.nn.logsumexp(z, axis=-1)
    label_logit = jnp.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    nll = log_normalizer - label_logit
    smoothed = nll + label_smoothing * (label_logit - jnp.mean(z, axis=-1))
    correct = jnp.argmax(z, axis=-1) == targets
    return _weighted_mean(smoothed, weights), {"accuracy": _weighted_mean(correct, weights),
                                              "nll": _weighted_mean(nll, weights)}


# --------------------------------------------------------------------------------------------- QA

def qa_loss(answer_logits: jax.Array, answers: jax.Array,
            valid: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """Open-ended QA as classification: cross-entropy of answer_logits [B, A] against answers [B].

    Examples with valid False or answer -1 (an answer outside the vocabulary) are excluded. Metric: accuracy.
    """
    answers = jnp.asarray(answers).astype(jnp.int32)
    weights = _as_valid(valid, answers.shape) & (answers >= 0)
    return _integer_cross_entropy(answer_logits, answers, weights)


def choice_loss(choice_logits: jax.Array, choice_answer: jax.Array,
                valid: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """Multiple choice: integer-label cross-entropy over choice_logits [B, C] (-inf on padded choices, as
    `heads.choice_logits` gives) against choice_answer [B].

    Excluded (no loss, gradient or metric, and no NaN): valid False, choice_answer -1, or a label whose logit
    is not finite (all choices padding). The -inf of other padded choices stays in the softmax, where it is
    exactly probability 0. Metric: accuracy.
    """
    choice_answer = jnp.asarray(choice_answer).astype(jnp.int32)
    label_logit = jnp.take_along_axis(choice_logits, jnp.maximum(choice_answer, 0)[:, None], axis=1)[:, 0]
    weights = _as_valid(valid, choice_answer.shape) & (choice_answer >= 0) & jnp.isfinite(label_logit)
    return _integer_cross_entropy(choice_logits, choice_answer, weights)
