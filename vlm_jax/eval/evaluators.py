"""Evaluators the training loop runs at every evaluation and at the end: whole-split retrieval recall@K
and QA accuracy. Each is built from the loop's `Run` (mesh, model, shardings) and called as
`evaluator(state, split) -> {"<task>/<metric>": number}`.

The model runs jitted with the run's shardings on global batches; its outputs come back replicated, so
every process holds the whole split's results (each process read only its own shard) and computes the
same numbers. Padding clips (`valid` False) and padding captions/questions are dropped before scoring.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.data import pipeline
from vlm_jax.eval import metrics
from vlm_jax.models.layers import Encoded
from vlm_jax.train.loop import Run
from vlm_jax.train.state import TrainState


def _repeat(encoded: Encoded | None, times: int) -> Encoded | None:
    """Each example's encoding `times` times in a row (for its several captions or questions)."""
    if encoded is None:
        return None
    return Encoded(*(None if x is None else jnp.repeat(x, times, axis=0) for x in encoded))


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
        limit = int(run.config.eval.max_batches)
        for index, batch in enumerate(pipeline.eval_dataset(run.spec, split)):
            if 0 < limit <= index:
                break
            with run.mesh_context():
                parts.append(jax.device_get(self._step(state, run.to_device(batch))))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class RetrievalEvaluator(_Evaluator):
    """Text-to-video and video-to-text recall@1/5/10, median and mean rank over every caption of the split."""

    @staticmethod
    def forward(vlm, batch: dict) -> dict:
        video, _ = vlm.encode_video(batch["video"], None)
        clips, captions, length = batch["captions"].shape
        text = vlm.encode_text(batch["captions"].reshape(clips * captions, length),
                               batch["caption_masks"].reshape(clips * captions, length))
        video_emb, text_emb, _ = vlm.embed(_repeat(video, captions), text)  # the head projects both at once
        return {"video_emb": video_emb[::captions], "text_emb": text_emb.reshape(clips, captions, -1),
                "valid": batch["valid"], "caption_valid": batch["caption_valid"]}

    def __call__(self, state: TrainState, split: str) -> dict[str, float]:
        out = self.outputs(state, split)
        valid = out["valid"].astype(bool)
        video_emb, text_emb, caption_valid = out["video_emb"][valid], out["text_emb"][valid], out["caption_valid"][valid]
        clip_of_caption = np.broadcast_to(np.arange(len(video_emb))[:, None], caption_valid.shape)
        keep = caption_valid.astype(bool)
        scores = metrics.retrieval_metrics(video_emb, text_emb[keep], clip_of_caption[keep])
        return {f"retrieval/{k}": v for k, v in scores.items()}


class QaEvaluator(_Evaluator):
    """Open-ended accuracy (argmax over the answer vocabulary), per question type, and multiple-choice
    accuracy (argmax over each question's candidates), over every question of the split."""

    @staticmethod
    def forward(vlm, batch: dict) -> dict:
        from vlm_jax.models import heads
        video, audio = vlm.encode_video(batch["video"], batch.get("audio"))
        clips, questions, length = batch["questions"].shape
        text = vlm.encode_text(batch["questions"].reshape(clips * questions, length),
                               batch["question_masks"].reshape(clips * questions, length))
        logits = vlm.answer(vlm.fuse(_repeat(video, questions), _repeat(audio, questions), text))
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
        scores = {"qa/acc": metrics.accuracy(answer, answers)}
        for index, name in enumerate(self.run.vocabulary.question_types):
            of_type = types == index
            if of_type.any():
                scores[f"qa/acc_{name}"] = metrics.accuracy(answer[of_type], answers[of_type])
        has_choices = keep & (out["choice_answers"] >= 0)
        scores["qa/choice_acc"] = metrics.accuracy(out["choice"][has_choices], out["choice_answers"][has_choices])
        return scores


EVALUATORS: dict[str, tuple[Callable[[Run], Any], ...]] = {
    "pretrain": (RetrievalEvaluator,),
    "retrieval": (RetrievalEvaluator,),
    "caption": (),  # teacher-forced caption metrics come from the loss evaluator
    "qa": (QaEvaluator,),
}


def evaluators_for(config: Any) -> tuple[Callable[[Run], Any], ...]:
    """The evaluators that suit the config's task (beyond the loop's own loss evaluator)."""
    return EVALUATORS[config.train.task]


def metrics_table(results: dict[str, float]) -> str:
    """results.json as an aligned two-column table."""
    width = max((len(k) for k in results), default=0)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
    lines += [f"{k.ljust(width)}  {v:.4g}" if isinstance(v, (int, float)) else f"{k.ljust(width)}  {v}"
              for k, v in sorted(results.items())]
    return "\n".join(lines)
