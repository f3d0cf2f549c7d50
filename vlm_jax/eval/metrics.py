"""Pure metric functions on numpy arrays (no JAX, no model): retrieval ranks and recall@K, accuracy.

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
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Text-to-video and video-to-text retrieval over a whole split.

    video_emb [V, E], text_emb [T, E] (unit norm), text_video [T]: the index of each text's video.
    t2v: each text queries all videos (one positive). v2t: each video queries all texts; any of its own
    captions counts (the MSR-VTT multi-caption protocol). Keys `t2v_R@1`, ..., `v2t_MnR`.
    """
    text_video = np.asarray(text_video)
    similarity = np.asarray(text_emb, np.float64) @ np.asarray(video_emb, np.float64).T  # [T, V]
    t2v_pos = text_video[:, None] == np.arange(len(video_emb))[None, :]
    out = {f"t2v_{k}": v for k, v in recall_at_k(ranks(similarity, t2v_pos), ks).items()}
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
