"""Evaluators the training loop and `vlm eval` run on a split: retrieval recall@K (optionally re-ranked by
the matching head), QA accuracy / precision / recall / F1 per question type, generated-caption BLEU /
CIDEr-D / ROUGE-L, and recommendation hit-rate / nDCG for simulated users. Each is built from a `Run`
(mesh, model, shardings) and called as `evaluator(state, split) -> {"<task>/<metric>": number}`.

The model runs jitted with the run's shardings on global batches; its outputs come back replicated, so
every process holds the whole split's results (each process read only its own shard) and computes the
same numbers. Padding clips (`valid` False) and padding captions/questions are dropped before scoring.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.apps import recommend
from vlm_jax.data import pipeline, tokenizer
from vlm_jax.errors import UserError
from vlm_jax.eval import caption_metrics, metrics
from vlm_jax.models import decoding
from vlm_jax.models.layers import Encoded, repeat_encoded
from vlm_jax.run.build import Run
from vlm_jax.train.state import TrainState

log = logging.getLogger(__name__)


class _Evaluator:
    """Runs `self.forward(vlm, batch)` jitted over a split; subclasses score the concatenated outputs."""

    def __init__(self, run: Run):
        self.run = run
        self._step = jax.jit(self._apply, in_shardings=(run.factory.shardings, run.batch_sharding),
                             out_shardings=run.replicated)

    def _apply(self, state: TrainState, batch: dict) -> dict:
        return self.run.model.apply(state.variables(), batch, method=self.forward)

    @staticmethod
    def forward(vlm, batch: dict) -> dict:
        raise NotImplementedError

    def outputs(self, state: TrainState, split: str) -> dict[str, np.ndarray]:
        run, parts = self.run, []
        for batch in run.eval_batches(split):
            with run.mesh_context():
                parts.append(jax.device_get(self._step(state, run.to_device(batch))))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _replicated_to_batches(run: Run, arrays: dict[str, np.ndarray], size: int):
    """Global batches of `size` rows from arrays every process holds in full (the evaluators' outputs),
    the last one padded with its first row; yields (batch on the mesh, number of real rows)."""
    total = len(next(iter(arrays.values())))
    for start in range(0, total, size):
        rows = np.arange(start, min(start + size, total))
        count = len(rows)
        rows = np.concatenate([rows, np.full(size - count, rows[0])])
        batch = {}
        for name, value in arrays.items():
            chunk = value[rows]
            batch[name] = jax.make_array_from_callback(chunk.shape, run.batch_sharding, lambda index, c=chunk: c[index])
        yield batch, count


def _encoded_arrays(prefix: str, encoded: Encoded | None) -> dict[str, jax.Array]:
    if encoded is None:
        return {}
    return {f"{prefix}_{name}": value for name, value in encoded._asdict().items() if value is not None}


def _encoded_from(prefix: str, arrays: dict) -> Encoded | None:
    if f"{prefix}_tokens" not in arrays:
        return None
    return Encoded(arrays[f"{prefix}_tokens"], arrays[f"{prefix}_pooled"], arrays.get(f"{prefix}_mask"))


class RetrievalEvaluator(_Evaluator):
    """Text-to-video and video-to-text recall@1/5/10, median and mean rank over every caption of the split;
    text-to-video R@1 and R@5 per caption style too (`t2v_R@1_<style>`) where the data set names the style of
    each caption slot (`Vocabulary.caption_styles`).

    With `eval.rerank_k` > 0, each caption's top k videos by embedding similarity are re-ordered by the
    matching (VTM) head on the fused pair, as ALPRO and UMT do (keys `t2v_rerank_R@1`, ...); they stay
    ahead of the rest. The towers' tokens are kept from the first pass, so re-ranking only re-runs the
    text tower and the fusion. Video-to-text keeps the plain similarities.
    """

    def __init__(self, run: Run):
        self.rerank_k = int(run.config.eval.rerank_k)
        super().__init__(run)
        self._match = jax.jit(self._match_pairs, in_shardings=(run.factory.shardings, run.batch_sharding),
                              out_shardings=run.replicated)

    def _apply(self, state: TrainState, batch: dict) -> dict:
        return self.run.model.apply(state.variables(), batch, self.rerank_k > 0, method=self.forward)

    @staticmethod
    def forward(vlm, batch: dict, keep_tokens: bool = False) -> dict:
        video, audio = vlm.encode_video(batch["video"], batch.get("audio"))
        clips, captions, length = batch["captions"].shape
        text = vlm.encode_text(batch["captions"].reshape(clips * captions, length),
                               batch["caption_masks"].reshape(clips * captions, length))
        # the head projects both sides at once
        video_emb, text_emb, _ = vlm.embed(repeat_encoded(video, captions), text, repeat_encoded(audio, captions))
        out = {"video_emb": video_emb[::captions], "text_emb": text_emb.reshape(clips, captions, -1),
               "valid": batch["valid"], "caption_valid": batch["caption_valid"]}
        if keep_tokens:
            out.update(captions=batch["captions"], caption_masks=batch["caption_masks"],
                       **_encoded_arrays("video", video), **_encoded_arrays("audio", audio))
        return out

    def _match_pairs(self, state: TrainState, batch: dict) -> jax.Array:
        def match(vlm, batch):
            text = vlm.encode_text(batch["caption"], batch["caption_mask"])
            return vlm.match(vlm.fuse(_encoded_from("video", batch), _encoded_from("audio", batch), text))
        return self.run.model.apply(state.variables(), batch, method=match)

    def __call__(self, state: TrainState, split: str) -> dict[str, float]:
        out = self.outputs(state, split)
        valid = out["valid"].astype(bool)
        video_emb, text_emb = out["video_emb"][valid], out["text_emb"][valid]
        caption_valid = out["caption_valid"][valid]
        clip_of_caption = np.broadcast_to(np.arange(len(video_emb))[:, None], caption_valid.shape)
        keep = caption_valid.astype(bool)
        style_of_caption = np.broadcast_to(np.arange(caption_valid.shape[1])[None, :], caption_valid.shape)
        scores = metrics.retrieval_metrics(video_emb, text_emb[keep], clip_of_caption[keep],
                                           text_style=style_of_caption[keep],
                                           style_names=self.run.vocabulary.caption_styles)
        result = {f"retrieval/{k}": v for k, v in scores.items()}
        if self.rerank_k > 0:
            clips = {k: v[valid] for k, v in out.items() if k.startswith(("video_", "audio_")) and k != "video_emb"}
            captions = {"caption": out["captions"][valid][keep], "caption_mask": out["caption_masks"][valid][keep]}
            reranked = self._rerank(state, text_emb[keep] @ video_emb.T, captions, clips)
            ranks = metrics.ranks(reranked, clip_of_caption[keep][:, None] == np.arange(len(video_emb))[None])
            result.update({f"retrieval/t2v_rerank_{k}": v for k, v in metrics.recall_at_k(ranks).items()})
        return result

    def _rerank(self, state: TrainState, similarity: np.ndarray, captions: dict[str, np.ndarray],
                clips: dict[str, np.ndarray]) -> np.ndarray:
        """`similarity` [T, V] with each text's top k videos replaced by 1e6 + their matching logit."""
        k = min(self.rerank_k, similarity.shape[1])
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # [T, k]
        pairs = {name: value[top.reshape(-1)] for name, value in clips.items()}
        pairs.update({name: np.repeat(value, k, axis=0) for name, value in captions.items()})
        size = self.run.spec.batch_size * self.run.spec.shard_count
        logits = []
        for batch, count in _replicated_to_batches(self.run, pairs, size):
            with self.run.mesh_context():
                logits.append(np.asarray(jax.device_get(self._match(state, batch)))[:count])
        reranked = similarity.copy()
        np.put_along_axis(reranked, top, 1e6 + np.concatenate(logits).reshape(top.shape), axis=1)
        return reranked


class QaEvaluator(_Evaluator):
    """Open-ended answers (argmax over the answer vocabulary): accuracy and macro precision / recall / F1
    overall and per question type, F1 per answer; and multiple-choice accuracy (argmax over each
    question's candidates), over every question of the split."""

    @staticmethod
    def forward(vlm, batch: dict) -> dict:
        from vlm_jax.models import heads
        video, audio = vlm.encode_video(batch["video"], batch.get("audio"))
        clips, questions, length = batch["questions"].shape
        text = vlm.encode_text(batch["questions"].reshape(clips * questions, length),
                               batch["question_masks"].reshape(clips * questions, length))
        logits = vlm.answer(vlm.fuse(video, audio, text))  # each clip meets its `questions` questions
        choices = batch["choices"].reshape(clips * questions, -1)
        return {"answer": jnp.argmax(logits, -1).reshape(clips, questions),
                "choice": jnp.argmax(heads.choice_logits(logits, choices), -1).reshape(clips, questions),
                "answers": batch["answers"], "choice_answers": batch["choice_answers"],
                "question_types": batch["question_types"],
                "question_valid": batch["question_valid"] & batch["valid"][:, None]}

    def __call__(self, state: TrainState, split: str) -> dict[str, float]:
        out = self.outputs(state, split)
        keep = out["question_valid"].astype(bool)
        answer, answers, types = out["answer"][keep], out["answers"][keep], out["question_types"][keep]
        names = self.run.vocabulary.answers
        overall = metrics.classification_metrics(answer, answers, class_names=names)
        scores = {f"qa/{k}": v for k, v in overall.items()}
        for index, name in enumerate(self.run.vocabulary.question_types):
            of_type = types == index
            if of_type.any():
                typed = metrics.classification_metrics(answer[of_type], answers[of_type], class_names=names)
                scores.update({f"qa/{k}_{name}": typed[k] for k in ("acc", "precision_macro", "recall_macro",
                                                                     "f1_macro")})
        has_choices = keep & (out["choice_answers"] >= 0)
        scores["qa/choice_acc"] = metrics.accuracy(out["choice"][has_choices], out["choice_answers"][has_choices])
        return scores


class CaptionEvaluator(_Evaluator):
    """Captions generated by beam search (`eval.caption`: beam_size, alpha, max_len) scored against every
    reference caption of the clip: BLEU-1..4, CIDEr-D and ROUGE-L (coco-caption's definitions, no Java),
    and the share of distinct captions (a decoder stuck on one caption can still score some CIDEr).
    Candidates and references are both the tokenizer's decoded text, so they are tokenised alike."""

    def _apply(self, state: TrainState, batch: dict) -> dict:
        cfg = self.run.config.eval.caption
        tokens, _ = decoding.generate_captions(self.run.model, state.variables(), batch["video"], batch.get("audio"),
                                               max_len=int(cfg.max_len), beam_size=int(cfg.beam_size),
                                               alpha=float(cfg.alpha), min_len=int(cfg.min_len))
        return {"tokens": tokens, "captions": batch["captions"], "caption_valid": batch["caption_valid"],
                "valid": batch["valid"]}

    def __call__(self, state: TrainState, split: str) -> dict[str, float]:
        out = self.outputs(state, split)
        candidates, references = {}, {}
        for row in np.flatnonzero(out["valid"]):
            refs = [tokenizer.decode(ids) for ids, ok in zip(out["captions"][row], out["caption_valid"][row]) if ok]
            if refs:
                candidates[row], references[row] = tokenizer.decode(out["tokens"][row]), refs
        scores = {**caption_metrics.caption_metrics(candidates, references),
                  "distinct": caption_metrics.distinct(candidates)}
        return {f"caption/{k}": v for k, v in scores.items()}


class RecommendEvaluator(_Evaluator):
    """Recommendation for `eval.recommend_users` simulated users (each likes some scene attributes; see
    `apps.recommend.simulate_users`) from the clips' video embeddings: hit-rate@10 and nDCG@10, and the
    same for random recommendations. Data sets without scene attributes, and splits too small for the
    simulated tastes, give no keys (the latter with a warning)."""

    @staticmethod
    def forward(vlm, batch: dict) -> dict:
        video, audio = vlm.encode_video(batch["video"], batch.get("audio"))
        return {"video_emb": vlm.embed_video(video, audio), "index": batch["index"], "valid": batch["valid"]}

    def __call__(self, state: TrainState, split: str) -> dict[str, float]:
        attributes = pipeline.clip_attributes(self.run.spec, split)
        if attributes is None:
            return {}
        out = self.outputs(state, split)
        valid = out["valid"].astype(bool)
        embeddings, index = out["video_emb"][valid], out["index"][valid]
        try:
            users = recommend.simulate_users([attributes[i] for i in index], int(self.run.config.eval.recommend_users),
                                             seed=int(self.run.config.seed))
        except UserError as error:  # too few evaluated clips (eval.max_batches) for any simulated taste
            log.warning("recommendation not evaluated on %s: %s", split, error)
            return {}
        scores = recommend.evaluate(users, embeddings, k=10)
        scores.update({f"random_{k}": v for k, v in recommend.random_baseline(users, len(embeddings), k=10,
                                                                                seed=0).items() if k != "num_users"})
        return {f"recommend/{k}": v for k, v in scores.items()}


class ExplainEvaluator:
    """Whether explanations point at what the text describes (`apps.explain.score_split` on the first
    `eval.explain_clips` clips of a split): the pointing game and the heatmap energy inside the objects'
    boxes, beside a randomly initialised model's and the boxes' share of the frame, as
    `explain/<method>_<metric>` for gradient x input, and for cross-attention where the run trains it.
    Data sets without boxes give no keys."""

    def __init__(self, run: Run):
        self.run = run

    def __call__(self, state: TrainState, split: str) -> dict[str, float]:
        from vlm_jax.apps import explain, predictor  # they load runs through this module's callers
        if "boxes" not in pipeline.open_split(self.run.spec, split)[0].info.features:
            return {}
        model = predictor.Predictor(self.run, state, int(jax.device_get(state.step)), workdir="")
        methods = ["gradient"] + (["attention"] if explain.resolve_method(self.run, "auto") == "attention" else [])
        limit = int(self.run.config.eval.explain_clips)
        return {f"explain/{method}_{k}": v for method in methods
                for k, v in explain.score_split(model, split, limit=limit, method=method).items()}


EVALUATORS: dict[str, Callable[[Run], Any]] = {
    "retrieval": RetrievalEvaluator, "qa": QaEvaluator, "caption": CaptionEvaluator, "recommend": RecommendEvaluator,
    "explain": ExplainEvaluator,
}
# What each training task is evaluated on by default (`vlm eval --tasks` picks any of EVALUATORS).
TASK_EVALUATORS: dict[str, tuple[str, ...]] = {
    "pretrain": ("retrieval", "recommend"),
    "retrieval": ("retrieval", "recommend"),
    "caption": ("caption",),
    "qa": ("qa",),
}


def evaluators_for(config: Any, tasks: tuple[str, ...] | None = None) -> tuple[Callable[[Run], Any], ...]:
    """The evaluators for `tasks` (default: those that suit the config's training task)."""
    return tuple(EVALUATORS[name] for name in (tasks or TASK_EVALUATORS[config.train.task]))
