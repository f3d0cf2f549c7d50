"""Recommendation from a history (exactness against brute force, MMR) and simulated-user evaluation."""

import numpy as np
import pytest

from vlm_jax.apps.recommend import evaluate, random_baseline, recommend, simulate_users
from vlm_jax.errors import UserError

COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan", "orange")
SHAPES = ("circle", "square", "triangle", "star", "cross")
MOTIONS = ("left", "right", "up", "down", "still", "grow", "shrink")
SOUNDS = ("silence", "high beep", "low beep", "clicks")


def _attributes(num_items, seed=0):
    """moving_shapes-like items: one to three objects, each with a colour, shape and motion; one sound."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(num_items):
        n = int(rng.integers(1, 4))
        items.append({"colour": [str(c) for c in rng.choice(COLOURS, n, replace=False)],
                      "shape": [str(s) for s in rng.choice(SHAPES, n, replace=False)],
                      "motion": [str(m) for m in rng.choice(MOTIONS, n)], "sound": str(rng.choice(SOUNDS))})
    return items


def _one_hot(attributes):
    """Unit-norm multi-hot vectors over every (kind, value): embeddings that encode the attributes exactly."""
    vocabulary = {pair: i for i, pair in enumerate(
        [("colour", c) for c in COLOURS] + [("shape", s) for s in SHAPES] + [("motion", m) for m in MOTIONS]
        + [("sound", s) for s in SOUNDS])}
    x = np.zeros((len(attributes), len(vocabulary)), np.float32)
    for row, item in zip(x, attributes):
        for kind, values in item.items():
            row[[vocabulary[kind, v] for v in ([values] if isinstance(values, str) else values)]] = 1
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _random_unit(num_items, dim, seed):
    x = np.random.default_rng(seed).normal(size=(num_items, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("mode", ["mean", "max", "mean+max"])
def test_recommend_matches_brute_force_and_skips_the_history(mode):
    embeddings = _random_unit(3000, 16, seed=0)
    history = [5, 17, 2999, 17]
    out = recommend(history, embeddings, k=10, mode=mode)
    watched = embeddings[[5, 17, 2999]].astype(np.float64)
    sims = embeddings.astype(np.float64) @ watched.T
    mean = watched.mean(0) / np.linalg.norm(watched.mean(0))
    score = {"mean": embeddings @ mean, "max": sims.max(1),
             "mean+max": (embeddings @ mean + sims.max(1)) / 2}[mode]
    score[[5, 17, 2999]] = -np.inf
    expected = np.argsort(-score, kind="stable")[:10]
    items, scores = [i for i, _ in out], [s for _, s in out]
    assert items == expected.tolist()
    np.testing.assert_allclose(scores, score[expected], atol=1e-6)
    assert len(set(items)) == 10 and not set(items) & set(history)
    assert scores == sorted(scores, reverse=True)


def test_recommend_rejects_bad_arguments():
    embeddings = _random_unit(50, 8, seed=1)
    with pytest.raises(UserError, match="non-empty history"):
        recommend([], embeddings)
    with pytest.raises(UserError, match="unknown recommendation mode 'median'"):
        recommend([1], embeddings, mode="median")
    with pytest.raises(UserError, match="history positions"):
        recommend([50], embeddings)
    assert len(recommend(list(range(45)), embeddings, k=10)) == 5  # only five items left to recommend


def test_mmr_trades_relevance_for_diversity():
    rng = np.random.default_rng(2)
    eye = np.eye(8)
    near_duplicates = [eye[0] + 0.3 * eye[1] + 0.01 * rng.normal(size=8) for _ in range(10)]
    varied = [eye[0] + 0.5 * eye[j] for j in range(2, 8)]
    embeddings = np.array([eye[0]] + near_duplicates + varied, np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)

    def mean_pairwise_similarity(recommended):
        x = embeddings[[i for i, _ in recommended]]
        sims = x @ x.T
        return (sims.sum() - np.trace(sims)) / (len(x) * (len(x) - 1))

    plain = recommend([0], embeddings, k=5)
    assert recommend([0], embeddings, k=5, mmr_lambda=1.0) == plain
    assert {i for i, _ in plain} <= set(range(1, 11))
    diverse = recommend([0], embeddings, k=5, mmr_lambda=0.3)
    assert len({i for i, _ in diverse}) == 5 and 0 not in {i for i, _ in diverse}
    assert mean_pairwise_similarity(diverse) < mean_pairwise_similarity(plain) - 0.05


def test_simulate_users_is_deterministic_and_valid():
    attributes = _attributes(400)
    users = simulate_users(attributes, num_users=50, seed=7)
    assert users == simulate_users(attributes, num_users=50, seed=7)
    assert users != simulate_users(attributes, num_users=50, seed=8)
    for user in users:
        assert len(user.history) == 5 and 1 <= len(user.held_out) <= 5
        assert set(user.history) <= user.relevant and set(user.held_out) <= user.relevant - set(user.history)
        assert 0.05 <= len(user.relevant) / len(attributes) <= 0.3
        assert 2 <= len(user.liked) <= 3 and len({kind for kind, _ in user.liked}) == len(user.liked)
        for i in user.relevant:  # relevant items carry every liked value
            assert all(value in attributes[i][kind] for kind, value in user.liked)
    with pytest.raises(UserError, match="no liked attribute set"):
        simulate_users(attributes, num_users=1, seed=0, relevant_fraction=(0.9, 1.0), max_tries=20)


def test_evaluate_separates_informative_from_random_embeddings():
    attributes = _attributes(400)
    users = simulate_users(attributes, num_users=200, seed=3)
    chance = random_baseline(users, num_items=400, k=10, seed=0)
    informed = evaluate(users, _one_hot(attributes), k=10, mode="mean+max")
    uninformed = evaluate(users, _random_unit(400, 32, seed=4), k=10)
    assert set(informed) == {"hit_rate@10", "nDCG@10", "num_users"} and informed["num_users"] == 200
    # held-out items are 5 of ~40 equally relevant ones, so even a perfect ranking hits them only sometimes
    assert informed["hit_rate@10"] > 3 * chance["hit_rate@10"] + 20 and informed["nDCG@10"] > 5 * chance["nDCG@10"]
    assert abs(uninformed["hit_rate@10"] - chance["hit_rate@10"]) < 15
    assert abs(uninformed["nDCG@10"] - chance["nDCG@10"]) < 10
