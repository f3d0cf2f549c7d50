"""Train and evaluation steps: pure functions `(state, batch) -> (state, metrics)`, one trainer, per-task losses.

A task is a loss function `(vlm, batch, rng, settings, train) -> (loss, metrics)` that runs inside
`VLM.apply` (so every head shares one apply and BatchNorm statistics update once):

- `pretrain`: the config-weighted sum of contrastive (InfoNCE over the global batch), video-text matching
  (negatives mined from the contrastive similarities plus the data's own hard-negative captions), masked
  language modelling conditioned on the video, and masked video modelling;
- `retrieval`: contrastive finetuning (the clip's side with its audio when `model.retrieval_audio` is on);
- `caption`: teacher-forced cross-entropy with label smoothing;
- `qa`: answer classification plus multiple choice over each question's candidates, for every question
  the batch holds per clip (the video encoded once).

Every component's loss is logged as `<name>_loss` with its metrics as `<name>/<metric>` (accuracies in
percent); `loss` is the weighted total. `make_train_step` / `make_eval_step` close over the model, optimizer and settings; the
loop jits them with shardings. Batches arrive in the training layout (one caption and hard negative and
`data.questions_per_clip` questions per clip, `pipeline.train_dataset`); `eval_slots` turns an evaluation
batch into what each loss takes, for validation losses over every caption style and question type.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlm_jax.errors import UserError
from vlm_jax.models import heads
from vlm_jax.models.layers import Encoded, take_rows
from vlm_jax.models.vlm import VLM, retrieval_uses_audio
from vlm_jax.train import losses
from vlm_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

_FUSED = ("video_encoder", "audio_encoder", "text_encoder", "fusion")
# loss -> the top-level modules its gradient reaches (contrastive: the audio tower too when the retrieval
# embedding reads it, `Settings.retrieval_audio`)
LOSS_MODULES = {"contrastive": ("video_encoder", "text_encoder", "contrastive"), "vtm": (*_FUSED, "matching"),
                "mlm": (*_FUSED, "mlm_head"), "mvm": ("video_encoder", "mvm_head"),
                "caption": ("video_encoder", "audio_encoder", "caption_decoder"), "qa": (*_FUSED, "qa_head"),
                "choice": (*_FUSED, "qa_head")}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the losses read from the config: the task, its loss weights, the masking ratios and whether the
    retrieval embedding reads the audio (`model.retrieval_audio`, resolved)."""
    task: str
    weights: tuple[tuple[str, float], ...]  # (loss name, weight); weight 0 skips the loss entirely
    mlm_ratio: float = 0.15
    caption_label_smoothing: float = 0.1
    retrieval_audio: bool = False

    @classmethod
    def from_config(cls, config) -> "Settings":
        task = config.train.task
        if task not in TASKS:
            raise UserError(f"config key train.task must be one of {', '.join(TASKS)} (got {task!r})")
        weights = tuple((name, float(weight)) for name, weight in sorted(config.losses.items()))
        return cls(task=task, weights=weights, mlm_ratio=float(config.train.mlm_ratio),
                   caption_label_smoothing=float(config.train.caption_label_smoothing),
                   retrieval_audio=retrieval_uses_audio(config.model))

    def weight(self, name: str) -> float:
        return dict(self.weights).get(name, 0.0)


# ----------------------------------------------------------------------------------------------- helpers

def _concat(*parts: Encoded) -> Encoded:
    mask = None if any(p.mask is None for p in parts) else jnp.concatenate([p.mask for p in parts])
    return Encoded(jnp.concatenate([p.tokens for p in parts]), jnp.concatenate([p.pooled for p in parts]), mask)


def _blocks(rows: Any, size: int, start: int, stop: int) -> Any:
    """Row blocks start..stop-1 (of `size` rows each) of every field of an Encoded or Fused."""
    return type(rows)(*(None if x is None else x[start * size:stop * size] for x in rows))


def _audio(batch: Batch) -> jax.Array | None:
    return batch.get("audio")


def _add(metrics: Metrics, name: str, loss: jax.Array, parts: Metrics) -> None:
    """Log a component's loss as `<name>_loss` and its metrics as `<name>/<metric>`, accuracies in percent
    (as results.json reports every accuracy and recall)."""
    metrics[f"{name}_loss"] = loss
    metrics.update({f"{name}/{k}": 100.0 * v if "acc" in k else v for k, v in parts.items()})


def _weighted(settings: Settings, terms: dict[str, jax.Array], metrics: Metrics) -> tuple[jax.Array, Metrics]:
    total = sum(settings.weight(name) * value for name, value in terms.items())
    metrics["loss"] = total
    return total, metrics


# ----------------------------------------------------------------------------------------------- tasks

def pretrain_loss(vlm: VLM, batch: Batch, rng: jax.Array, settings: Settings, train: bool) -> tuple[jax.Array, Metrics]:
    k_mine, k_mlm, k_mvm = jax.random.split(rng, 3)
    valid = batch["caption_valid"].astype(bool)
    vtm, mlm = bool(settings.weight("vtm")), bool(settings.weight("mlm"))
    video, audio = vlm.encode_video(batch["video"], _audio(batch), train=train)
    # one text-tower pass over every text the losses read: captions, data negatives (vtm), masked captions (mlm)
    ids, masks = [batch["caption"]], [batch["caption_mask"]]
    if vtm:
        ids.append(batch["negative"])
        masks.append(batch["negative_mask"])
    if mlm:
        masked_ids, targets = losses.mask_tokens(batch["caption"], batch["caption_mask"], k_mlm, settings.mlm_ratio)
        ids.append(masked_ids)
        masks.append(batch["caption_mask"])
    batch_size = batch["caption"].shape[0]
    texts = vlm.encode_text(jnp.concatenate(ids), jnp.concatenate(masks), train=train)
    text = _blocks(texts, batch_size, 0, 1)
    terms, metrics = {}, {}

    video_emb, text_emb, scale = vlm.embed(video, text, audio)
    if settings.weight("contrastive"):
        terms["contrastive"], parts = losses.contrastive_loss(video_emb, text_emb, scale, valid)
        _add(metrics, "contrastive", terms["contrastive"], parts)

    # one fusion pass over vtm's [positives; (video, mined text); (mined video, text); (video, data negative)]
    # and mlm's (video, masked caption), as (clip rows, texts): each clip is fused once, not once per pair
    pairs = []
    clips = jnp.arange(batch_size)
    if vtm:
        similarity = scale * video_emb @ text_emb.T
        hard_text, hard_video = losses.mine_hard_negatives(similarity, k_mine, valid)
        pairs += [(clips, text), (clips, take_rows(text, hard_text)), (hard_video, text),
                  (clips, _blocks(texts, batch_size, 1, 2))]
    if mlm:
        pairs.append((clips, _blocks(texts, batch_size, len(ids) - 1, len(ids))))
    if pairs:
        fused = vlm.fuse(video, audio, _concat(*(t for _, t in pairs)), train=train,
                         clip_rows=jnp.concatenate([rows for rows, _ in pairs]))

    if vtm:
        logits = vlm.match(_blocks(fused, batch_size, 0, 4)).reshape(4, -1)
        neg_valid = jnp.stack([valid & valid[hard_text], valid & valid[hard_video],
                               valid & batch["has_negative"].astype(bool)])
        terms["vtm"], parts = losses.matching_loss(logits[0], logits[1:].reshape(-1), valid, neg_valid.reshape(-1))
        _add(metrics, "vtm", terms["vtm"], parts)

    if mlm:
        targets = jnp.where(valid[:, None], targets, -1)
        # vocabulary logits only at the (at most `limit`) predicted positions of each row: [B, limit, V]
        limit = max(1, round(settings.mlm_ratio * targets.shape[1]))  # mask_tokens' count never exceeds it
        positions = jnp.argsort(targets < 0, axis=1, stable=True)[:, :limit]
        masked_fused = _blocks(fused, batch_size, len(pairs) - 1, len(pairs))
        hidden = jnp.take_along_axis(masked_fused.tokens, positions[..., None], axis=1)
        logits = vlm.mlm(masked_fused._replace(tokens=hidden))
        terms["mlm"], parts = losses.mlm_loss(logits, jnp.take_along_axis(targets, positions, axis=1))
        _add(metrics, "mlm", terms["mlm"], parts)

    if settings.weight("mvm"):
        tubelet = tuple(vlm.config.mvm.tubelet)
        masked_video, positions, num_cubes = losses.mask_cubes(batch["video"], k_mvm, tubelet,
                                                               vlm.config.mvm.mask_ratio)
        masked_tokens, _ = vlm.encode_video(masked_video, None, train=train)
        pred = vlm.mvm(masked_tokens, positions, num_cubes)
        targets = losses.mvm_targets(batch["video"], positions, tubelet)
        terms["mvm"], _ = losses.mvm_loss(pred, targets, jnp.broadcast_to(valid[:, None], positions.shape))
        _add(metrics, "mvm", terms["mvm"], {})  # its only metric is the loss itself
    return _weighted(settings, terms, metrics)


def retrieval_loss(vlm: VLM, batch: Batch, rng: jax.Array, settings: Settings, train: bool) -> tuple[jax.Array, Metrics]:
    video, audio = vlm.encode_video(batch["video"], _audio(batch), train=train)
    text = vlm.encode_text(batch["caption"], batch["caption_mask"], train=train)
    video_emb, text_emb, scale = vlm.embed(video, text, audio)
    loss, parts = losses.contrastive_loss(video_emb, text_emb, scale, batch["caption_valid"].astype(bool))
    metrics = {"logit_scale": scale}
    _add(metrics, "contrastive", loss, parts)
    return _weighted(settings, {"contrastive": loss}, metrics)


def caption_loss(vlm: VLM, batch: Batch, rng: jax.Array, settings: Settings, train: bool) -> tuple[jax.Array, Metrics]:
    video, audio = vlm.encode_video(batch["video"], _audio(batch), train=train)
    logits = vlm.caption(batch["caption"], video, audio, train=train)
    mask = batch["caption_mask"] * batch["caption_valid"][:, None].astype(batch["caption_mask"].dtype)
    loss, parts = losses.caption_loss(logits, batch["caption"], mask, settings.caption_label_smoothing)
    metrics = {}
    _add(metrics, "caption", loss, parts)
    return _weighted(settings, {"caption": loss}, metrics)


def qa_loss(vlm: VLM, batch: Batch, rng: jax.Array, settings: Settings, train: bool) -> tuple[jax.Array, Metrics]:
    """Every question of the batch ([B, Q] of them, `question_valid` marking the real ones): the video is
    encoded once and fused with each of its clip's questions."""
    clips, count, length = batch["questions"].shape
    valid = batch["question_valid"].astype(bool).reshape(-1)
    video, audio = vlm.encode_video(batch["video"], _audio(batch), train=train)
    question = vlm.encode_text(batch["questions"].reshape(clips * count, length),
                               batch["question_masks"].reshape(clips * count, length), train=train)
    fused = vlm.fuse(video, audio, question, train=train)  # each clip meets its `count` questions
    logits = vlm.answer(fused, train=train)
    terms, metrics = {}, {}
    terms["qa"], parts = losses.qa_loss(logits, batch["answers"].reshape(-1), valid)
    _add(metrics, "qa", terms["qa"], parts)
    if settings.weight("choice"):
        choices = batch["choices"].reshape(clips * count, -1)
        terms["choice"], parts = losses.choice_loss(heads.choice_logits(logits, choices),
                                                    batch["choice_answers"].reshape(-1), valid)
        _add(metrics, "choice", terms["choice"], parts)
    return _weighted(settings, terms, metrics)


@dataclasses.dataclass(frozen=True)
class Task:
    """A training task: its loss function, the losses it weighs (`config.losses`), and whether each clip
    meets its questions (qa) or its captions."""
    loss: Callable[..., tuple[jax.Array, Metrics]]
    losses: tuple[str, ...]
    questions: bool = False


TASKS: dict[str, Task] = {
    "pretrain": Task(pretrain_loss, ("contrastive", "vtm", "mlm", "mvm")),
    "retrieval": Task(retrieval_loss, ("contrastive",)),
    "caption": Task(caption_loss, ("caption",)),
    "qa": Task(qa_loss, ("qa", "choice"), questions=True),
}


def trained_modules(settings: Settings) -> set[str]:
    """The top-level modules whose parameters the task's losses reach (`LOSS_MODULES`, the losses of weight
    0 left out); the loop freezes the others, so that weight decay does not shrink heads that get no
    gradient (and they cost no optimizer memory)."""
    used = set()
    for loss in TASKS[settings.task].losses:
        if settings.weight(loss):
            used.update(LOSS_MODULES[loss])
            if loss == "contrastive" and settings.retrieval_audio:
                used.add("audio_encoder")
    return used


# ----------------------------------------------------------------------------------------------- steps

def _apply_loss(model: VLM, settings: Settings, params: Any, batch_stats: Any, batch: Batch, rng: jax.Array,
                train: bool) -> tuple[jax.Array, tuple[Metrics, Any]]:
    k_loss, k_dropout, k_masking = jax.random.split(rng, 3)
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    mutable = ["batch_stats"] if (train and batch_stats) else False
    out = model.apply(variables, batch, k_loss, settings, train, method=TASKS[settings.task].loss,
                      rngs={"dropout": k_dropout, "masking": k_masking}, mutable=mutable)
    (loss, metrics), updates = out if mutable else (out, {})
    return loss, (metrics, updates.get("batch_stats", batch_stats))


def make_train_step(model: VLM, tx: optax.GradientTransformation,
                    settings: Settings) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """One optimizer micro-step: gradients of the task loss, optax update, BatchNorm statistics, step + 1.
    Metrics: the task's, plus the global norms of the gradients and the parameters, `nonfinite`, and the
    batch's totals of the pipeline's `data/<issue>` counts.

    A step whose loss, gradients or new parameters are not finite changes nothing but the step counter
    (`nonfinite` = 1): parameters, optimizer state (accumulated gradients included) and batch statistics
    keep their values, so a bad batch or a blow-up never reaches a checkpoint. The loop counts these
    steps, or stops at the first (`train.on_nonfinite`)."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(_apply_loss, argnums=2, has_aux=True)
        (loss, (metrics, batch_stats)), grads = grad_fn(model, settings, state.params, state.batch_stats, batch,
                                                        rng, True)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm, param_norm = optax.global_norm(grads), optax.global_norm(params)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
        params, opt_state, batch_stats = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), (params, opt_state, batch_stats),
            (state.params, state.opt_state, state.batch_stats))
        metrics = {**metrics, "grad_norm": grad_norm, "param_norm": param_norm,
                   "nonfinite": 1.0 - finite.astype(jnp.float32)}
        # the pipeline's per-clip counts of skipped and repaired data, summed over the global batch
        metrics.update({k: jnp.sum(v).astype(jnp.float32) for k, v in batch.items() if k.startswith("data/")})
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats), metrics

    return train_step


def make_eval_step(model: VLM, settings: Settings) -> Callable[[TrainState, Batch], Metrics]:
    """The task's losses and metrics without dropout or statistic updates, with a fixed key (masking for
    MLM/MVM is the same at every evaluation, so validation losses are comparable across steps). Returns
    per-batch means plus `weight`, the number of valid questions (qa) or captions (the other tasks), for a
    weighted average over batches."""
    counted = "question_valid" if TASKS[settings.task].questions else "caption_valid"

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        _, (metrics, _) = _apply_loss(model, settings, state.params, state.batch_stats, batch,
                                      jax.random.key(0), False)
        return {**metrics, "weight": jnp.sum(batch[counted].astype(jnp.float32))}

    return eval_step


def eval_slots(batch: dict[str, np.ndarray], task: str) -> Iterator[dict[str, np.ndarray]]:
    """An evaluation batch (every caption, hard negative and question of each clip, padded) as batches the
    task's loss takes, so that validation losses average over every question type and every caption
    style: qa takes every question at once; the other tasks take one caption per clip, so the batch comes
    once per caption slot, caption k paired with one of its own hard negatives (the clips take turns over
    their kinds: direction, order, sound)."""
    valid = batch["valid"].astype(bool)
    if TASKS[task].questions:
        yield {**batch, "question_valid": valid[:, None] & batch["question_valid"].astype(bool)}
        return
    out = {k: batch[k] for k in ("video", "audio", "has_audio") if k in batch}
    rows = np.arange(len(valid))
    for k in range(batch["captions"].shape[1]):
        own = (batch["negative_captions"] == k) & batch["negative_valid"].astype(bool)  # [B, N]
        count = own.sum(axis=1)
        turn = np.where(count > 0, np.maximum(batch["index"], 0) % np.maximum(count, 1), 0)
        pick = np.argmax(np.cumsum(own, axis=1) > turn[:, None], axis=1)  # the turn-th own negative
        yield {**out, "caption": batch["captions"][:, k], "caption_mask": batch["caption_masks"][:, k],
               "caption_valid": valid & batch["caption_valid"][:, k].astype(bool),
               "negative": batch["negatives"][rows, pick], "negative_mask": batch["negative_masks"][rows, pick],
               "has_negative": valid & (count > 0)}
