"""Retrieval ranks, recall@K, accuracy and classification precision/recall/F1 on hand-computed cases."""

import numpy as np
import pytest

from vlm_jax.eval import metrics


def test_ranks_count_items_scored_at_least_as_high_as_the_best_positive():
    similarity = np.array([[0.9, 0.1, 0.5],
                           [0.2, 0.3, 0.8],
                           [0.4, 0.4, 0.4]])  # ties count against the query
    positives = np.eye(3, dtype=bool)
    np.testing.assert_array_equal(metrics.ranks(similarity, positives), [1, 2, 3])
    two_positives = np.array([[False, True, True]] * 3)
    np.testing.assert_array_equal(metrics.ranks(similarity, two_positives), [2, 1, 2])
    with pytest.raises(ValueError):
        metrics.ranks(similarity, np.zeros((3, 3), bool))


def test_recall_at_k_and_median_rank():
    out = metrics.recall_at_k(np.array([1, 2, 6, 11]), ks=(1, 5, 10))
    assert out == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0, "MdR": 4.0, "MnR": 5.0}


def test_retrieval_metrics_with_several_captions_per_video():
    video = np.eye(3)
    # captions 0 and 1 describe video 0, caption 2 video 1, caption 3 video 2 (but points at video 1)
    text = np.array([[1.0, 0, 0], [0.6, 0.8, 0], [0, 1.0, 0], [0, 0.8, 0.6]])
    out = metrics.retrieval_metrics(video, text, np.array([0, 0, 1, 2]))
    assert out["t2v_R@1"] == 50.0  # captions 0 and 2 find their video first; 1 and 3 rank it second
    assert out["t2v_MdR"] == 1.5
    # video->text: video 0's best caption is caption 0 (rank 1); video 1: caption 2 (rank 1);
    # video 2's only caption scores 0.6, behind nothing else at 0.6 or more -> rank 1
    assert out["v2t_R@1"] == 100.0


def test_perfect_and_shuffled_embeddings():
    rng = np.random.default_rng(0)
    video = rng.normal(size=(50, 16))
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    perfect = metrics.retrieval_metrics(video, video, np.arange(50))
    assert perfect["t2v_R@1"] == 100.0 and perfect["v2t_MdR"] == 1.0
    shuffled = metrics.retrieval_metrics(video, video[rng.permutation(50)], np.arange(50))
    assert shuffled["t2v_R@1"] < 20.0


def test_accuracy():
    assert metrics.accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 0])) == 50.0
    with pytest.raises(ValueError):
        metrics.accuracy(np.array([1]), np.array([1, 2]))


def test_classification_metrics_macro_over_classes_in_labels_or_predictions():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 0, 3])
    # class 0: 1 of 2 predicted right, 1 of 2 found -> P 50, R 50, F1 50
    # class 1: 2 of 3 predicted right, 2 of 2 found -> P 66.7, R 100, F1 2*2/(3+2) = 80
    # class 2: never predicted -> P 0 (undefined), R 0, F1 0; class 3: never a label -> P 0, R 0 (undefined), F1 0
    out = metrics.classification_metrics(predictions, labels)
    assert out["acc"] == 50.0
    assert out["precision_macro"] == pytest.approx((50 + 200 / 3) / 4)
    assert out["recall_macro"] == pytest.approx((50 + 100) / 4)
    assert out["f1_macro"] == pytest.approx((50 + 80) / 4)
    assert out["f1_1"] == pytest.approx(80.0) and out["precision_1"] == pytest.approx(200 / 3)
    assert out["recall_2"] == 0.0 and out["precision_3"] == 0.0
    # a class in neither labels nor predictions is left out of the means
    named = metrics.classification_metrics(predictions, labels, class_names=["walk", "run", "jump", "sit", "swim"])
    assert named["f1_macro"] == out["f1_macro"] and named["f1_run"] == out["f1_1"] and "f1_swim" not in named
    assert set(named) == {"acc"} | {f"{m}_{n}" for m in ("precision", "recall", "f1")
                                    for n in ("macro", "walk", "run", "jump", "sit")}


def test_classification_metrics_perfect_and_invalid():
    perfect = metrics.classification_metrics(np.array([2, 0, 1]), np.array([2, 0, 1]), num_classes=3)
    assert all(v == 100.0 for v in perfect.values())
    with pytest.raises(ValueError):  # 3 is not a class when there are 3
        metrics.classification_metrics(np.array([3, 0]), np.array([0, 0]), num_classes=3)
    with pytest.raises(ValueError):
        metrics.classification_metrics(np.array([0]), np.array([0]), num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError):
        metrics.classification_metrics(np.array([0, 1]), np.array([0]))
