"""Pure metric functions on numpy arrays (no JAX, no model): retrieval ranks and recall@K, accuracy,
classification precision/recall/F1.

Percentages are 0 to 100, as results.json reports them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ranks(similarity: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """For each query row of `similarity` [Q, N], the 1-based rank of its best positive item, where
    `positives` [Q, N] (bool) marks the correct items. Ties count against the query: an item scoring
    equal to the best positive ranks ahead of it, so constant scores give the worst rank, not the best."""
    similarity = np.asarray(similarity, np.float64)
    positives = np.asarray(positives, bool)
    if not positives.any(axis=1).all():
        raise ValueError("every query needs at least one positive")
    best_positive = np.where(positives, similarity, -np.inf).max(axis=1, keepdims=True)
    ahead = (similarity >= best_positive) & ~positives
    return 1 + ahead.sum(axis=1)


def recall_at_k(rank: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (percent of queries whose rank <= K), the median rank (MdR) and the mean rank (MnR)."""
    rank = np.asarray(rank)
    out = {f"R@{k}": 100.0 * float(np.mean(rank <= k)) for k in ks}
    out["MdR"] = float(np.median(rank))
    out["MnR"] = float(np.mean(rank))
    return out


def retrieval_metrics(video_emb: np.ndarray, text_emb: np.ndarray, text_video: np.ndarray,
                      ks: Sequence[int] = (1, 5, 10), text_style: np.ndarray | None = None,
                      style_names: Sequence[str] = (), style_ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Text-to-video and video-to-text retrieval over a whole split.

    video_emb [V, E], text_emb [T, E] (unit norm), text_video [T]: the index of each text's video.
    t2v: each text queries all videos (one positive). v2t: each video queries all texts; any of its own
    captions counts (the MSR-VTT multi-caption protocol). Keys `t2v_R@1`, ..., `v2t_MnR`.
    With `text_style` [T] (an index into `style_names`), also `t2v_R@<k>_<style>` for `style_ks` (each text
    still ranked against every video): which kinds of caption the model matches, and which it does not.
    """
    text_video = np.asarray(text_video)
    similarity = np.asarray(text_emb, np.float64) @ np.asarray(video_emb, np.float64).T  # [T, V]
    t2v_pos = text_video[:, None] == np.arange(len(video_emb))[None, :]
    t2v = ranks(similarity, t2v_pos)
    out = {f"t2v_{k}": v for k, v in recall_at_k(t2v, ks).items()}
    for index, style in enumerate(style_names):
        of_style = np.asarray(text_style) == index
        if of_style.any():
            out.update({f"t2v_R@{k}_{style}": 100.0 * float(np.mean(t2v[of_style] <= k)) for k in style_ks})
    has_text = t2v_pos.any(axis=0)
    v2t = ranks(similarity.T[has_text], t2v_pos.T[has_text])
    out.update({f"v2t_{k}": v for k, v in recall_at_k(v2t, ks).items()})
    return out


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Percent of predictions equal to their label."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"shapes differ: {predictions.shape} vs {labels.shape}")
    return 100.0 * float(np.mean(predictions == labels)) if labels.size else float("nan")


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
                           class_names: Sequence[str] | None = None) -> dict[str, float]:
    """`acc`, then precision, recall and F1 macro-averaged (`f1_macro`) and per class (`f1_<name>`).

    The macro mean is over the classes in `labels` or `predictions`, sklearn's default, so the numbers equal
    `precision_recall_fscore_support(average='macro', zero_division=0)`: a class in neither has no defined
    score and would only pull the mean towards 0. An undefined precision or recall (no predictions or no
    labels of a class) counts as 0.

    Values are class indices, named by `class_names` where given (any values otherwise, named as they
    print). `num_classes` (default: len(class_names)) checks that they lie in [0, num_classes).
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out = {"acc": accuracy(predictions, labels)}
    if class_names is not None:
        num_classes = len(class_names) if num_classes is None else num_classes
        if len(class_names) != num_classes or len(set(class_names)) != num_classes:
            raise ValueError(f"need {num_classes} distinct class names, got {list(class_names)}")
    classes = np.union1d(labels, predictions)
    if num_classes is not None and classes.size and (classes[0] < 0 or classes[-1] >= num_classes):
        raise ValueError(f"classes must lie in [0, {num_classes}), got {classes[0]} to {classes[-1]}")
    scores: dict[str, dict] = {"precision": {}, "recall": {}, "f1": {}}  # metric -> class name -> percent
    for c in classes:
        name = class_names[c] if class_names is not None else c
        true_positives = np.sum((predictions == c) & (labels == c))
        predicted, actual = np.sum(predictions == c), np.sum(labels == c)  # not both 0: c occurs
        scores["precision"][name] = 100.0 * float(true_positives / predicted) if predicted else 0.0
        scores["recall"][name] = 100.0 * float(true_positives / actual) if actual else 0.0
        scores["f1"][name] = 100.0 * float(2 * true_positives / (predicted + actual))
    for metric, by_class in scores.items():
        out[f"{metric}_macro"] = float(np.mean(list(by_class.values()))) if by_class else float("nan")
    for metric, by_class in scores.items():
        out.update({f"{metric}_{name}": v for name, v in by_class.items()})
    return out
