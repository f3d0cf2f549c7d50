"""Content-based recommendation from a viewing history, and its evaluation with simulated users.

Everything works on an embedding matrix [N, D] with unit-norm rows (an `Index`'s `embeddings`), so it
is independent of the model that produced them. Metrics are percentages 0 to 100, keyed like
`hit_rate@10`; callers prefix them with `<split>/recommend/`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vlm_jax.apps.index import top_k
from vlm_jax.errors import UserError

MODES = ("mean", "max", "mean+max")


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x)
    if not np.isfinite(norm) or norm == 0:
        raise UserError("the history's mean embedding is zero; use mode='max'")
    return x / norm


def recommend(history_positions: list[int], embeddings: np.ndarray, k: int = 10, mode: str = "mean",
              mmr_lambda: float | None = None, candidate_pool: int = 100) -> list[tuple[int, float]]:
    """The k items most similar to the history, never a history item: [(position, relevance)], best first.

    Relevance of item e: `mean` = e . normalised mean of the history; `max` = the highest e . h over
    history items h; `mean+max` = their average. Both `max` and `mean+max` equal max over h of
    e . u_h (u_h = h, or (mean + h) / 2), and an item in the top n of that maximum is in the top n of
    its own u_h, so per-query `top_k` candidates rescored exactly give the exact ranking at any N.

    With `mmr_lambda`, the best `candidate_pool` items are re-ranked by Maximal Marginal Relevance:
    each pick maximises lambda * relevance - (1 - lambda) * its highest similarity to the items already
    picked, trading relevance for diversity (lambda 1 is the plain ranking). The list is then in pick
    order and each float is still the item's relevance. Equal relevance ranks the lower position first.
    """
    if mode not in MODES:
        raise UserError(f"unknown recommendation mode {mode!r}; choose from {', '.join(MODES)}")
    if mmr_lambda is not None and not 0 <= mmr_lambda <= 1:
        raise UserError(f"mmr_lambda must lie in [0, 1], got {mmr_lambda}")
    history = sorted(set(int(i) for i in history_positions))
    if not history:
        raise UserError("recommend needs a non-empty history")
    if history[0] < 0 or history[-1] >= len(embeddings):
        raise UserError(f"history positions must lie in [0, {len(embeddings)}), got {history}")
    n = min(k if mmr_lambda is None else max(k, candidate_pool), len(embeddings) - len(history))
    if n < 1:
        return []
    watched = np.asarray(embeddings[history], np.float64)
    mean = None if mode == "max" else _unit(watched.mean(axis=0))
    queries = mean[None] if mode == "mean" else watched if mode == "max" else (mean + watched) / 2
    _, indices = top_k(queries, embeddings, n, exclude=[set(history)] * len(queries))
    candidates = np.unique(indices[indices >= 0])
    vectors = np.asarray(embeddings[candidates], np.float64)
    relevance = _relevance(vectors, watched, mean, mode)
    order = np.lexsort((candidates, -relevance))[:n]
    candidates, relevance, vectors = candidates[order], relevance[order], vectors[order]
    if mmr_lambda is None:
        picks = list(range(min(k, n)))
    else:
        picks = _mmr(relevance, vectors @ vectors.T, min(k, n), mmr_lambda)
    return [(int(candidates[i]), float(relevance[i])) for i in picks]


def _relevance(vectors: np.ndarray, watched: np.ndarray, mean: np.ndarray | None, mode: str) -> np.ndarray:
    if mode == "mean":
        return vectors @ mean
    best = (vectors @ watched.T).max(axis=1)
    return best if mode == "max" else (vectors @ mean + best) / 2


def _mmr(relevance: np.ndarray, similarity: np.ndarray, k: int, mmr_lambda: float) -> list[int]:
    """Greedy Maximal Marginal Relevance picks (rows in relevance order, so ties keep that order)."""
    picks: list[int] = []
    closest = np.zeros(len(relevance))  # each candidate's highest similarity to the picks (none yet: 0)
    available = np.ones(len(relevance), bool)
    for step in range(k):
        score = np.where(available, mmr_lambda * relevance - (1 - mmr_lambda) * closest, -np.inf)
        pick = int(np.argmax(score))
        picks.append(pick)
        available[pick] = False
        closest = similarity[pick] if step == 0 else np.maximum(closest, similarity[pick])
    return picks


@dataclasses.dataclass(frozen=True)
class User:
    """A simulated user: the items they watched, a sample of other items they would like, every item they
    would like (history included), and the (kind, value) attribute pairs they like."""
    history: list[int]
    held_out: list[int]
    relevant: set[int]
    liked: list[tuple[str, str]]


def simulate_users(attributes: list[dict[str, list[str] | str]], num_users: int, seed: int,
                   liked_per_user: tuple[int, int] = (2, 3), history_size: int = 5, held_out_size: int = 5,
                   relevant_fraction: tuple[float, float] = (0.05, 0.3), max_tries: int = 1000) -> list[User]:
    """Users with a taste for attribute values, for evaluating recommendations without human ratings.

    Each user likes between liked_per_user[0] and [1] values, each of a different attribute kind (e.g.
    colour "red" and sound "high beep"); an item is relevant when it has ALL of them. "All" keeps
    relevant sets selective with coarse attributes (with "any", two or three values of a few-valued kind
    cover most items). Liked sets whose relevant fraction falls outside `relevant_fraction`, or that
    leave fewer than history_size + 1 relevant items, are redrawn. The history is a random sample of
    history_size relevant items; held_out a random sample of up to held_out_size of the rest.
    Deterministic given the seed.
    """
    item_values = [{(kind, str(v)) for kind, value in item.items()
                    for v in ([value] if isinstance(value, str) else value)} for item in attributes]
    by_kind: dict[str, list[str]] = {}
    for kind, value in sorted(set().union(*item_values)):
        by_kind.setdefault(kind, []).append(value)
    has = {pair: np.array([pair in values for values in item_values]) for pair in
           ((kind, v) for kind, vs in by_kind.items() for v in vs)}
    kinds = sorted(by_kind)
    low, high = min(liked_per_user[0], len(kinds)), min(liked_per_user[1], len(kinds))
    if low < 1:
        raise UserError("simulate_users needs items with attributes and liked_per_user of at least 1")
    rng = np.random.default_rng(seed)
    users = []
    for _ in range(num_users):
        for _ in range(max_tries):
            chosen = sorted(rng.choice(len(kinds), int(rng.integers(low, high + 1)), replace=False))
            liked = [(kinds[i], by_kind[kinds[i]][rng.integers(len(by_kind[kinds[i]]))]) for i in chosen]
            relevant = np.flatnonzero(np.logical_and.reduce([has[pair] for pair in liked]))
            fraction = len(relevant) / len(attributes)
            if relevant_fraction[0] <= fraction <= relevant_fraction[1] and len(relevant) > history_size:
                break
        else:
            raise UserError(f"no liked attribute set in {max_tries} draws makes {relevant_fraction[0]:.0%} to "
                            f"{relevant_fraction[1]:.0%} of the {len(attributes)} items (and more than "
                            f"{history_size}) relevant; widen relevant_fraction or change liked_per_user")
        shuffled = rng.permutation(relevant)
        history = sorted(int(i) for i in shuffled[:history_size])
        held_out = sorted(int(i) for i in shuffled[history_size:history_size + held_out_size])
        users.append(User(history, held_out, set(int(i) for i in relevant), liked))
    return users


def _metrics(users: list[User], recommendations: list[list[int]], k: int) -> dict[str, float]:
    """hit_rate@k (a held-out item among the k) and nDCG@k (binary gains on the held-out items; the ideal
    DCG fills min(k, their number) ranks), in percent: the leave-out protocol, where the held-out items
    stand for what the user watched next."""
    if not users:
        raise UserError("evaluating recommendations needs at least one user")
    discounts = 1 / np.log2(np.arange(2, k + 2))
    hits, ndcgs = [], []
    for user, items in zip(users, recommendations):
        targets = set(user.held_out)
        gains = np.array([i in targets for i in items[:k]], float)
        hits.append(gains.any())
        ideal = discounts[:min(k, len(targets))].sum()
        ndcgs.append(gains @ discounts[:len(gains)] / ideal if ideal else 0.0)
    return {f"hit_rate@{k}": 100 * float(np.mean(hits)), f"nDCG@{k}": 100 * float(np.mean(ndcgs)),
            "num_users": len(users)}


def evaluate(users: list[User], embeddings: np.ndarray, k: int = 10, **recommend_kwargs) -> dict[str, float]:
    """`recommend` for each user's history, scored by `_metrics`: hit_rate@k, nDCG@k, num_users."""
    recommendations = [[i for i, _ in recommend(user.history, embeddings, k, **recommend_kwargs)]
                       for user in users]
    return _metrics(users, recommendations, k)


def random_baseline(users: list[User], num_items: int, k: int = 10, seed: int = 0) -> dict[str, float]:
    """The same metrics for k uniformly random non-history items per user: chance level."""
    rng = np.random.default_rng(seed)
    recommendations = []
    for user in users:
        # A uniform ordered sample minus the history is a uniform ordered sample of the other items.
        sample = rng.choice(num_items, min(num_items, k + len(user.history)), replace=False)
        history = set(user.history)
        recommendations.append([int(i) for i in sample if i not in history][:k])
    return _metrics(users, recommendations, k)
