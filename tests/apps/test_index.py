"""The on-disk index (round trip, validation, crash safety) and top-k against numpy, by both engines."""

import json
import os

import numpy as np
import pytest

from vlm_jax.apps import index as index_lib
from vlm_jax.apps.index import Index, top_k
from vlm_jax.errors import UserError


def _unit_rows(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(queries, keys, k):
    """Exact top-k by argpartition, in float64 (scores and indices, best first)."""
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries.astype(np.float64) @ keys.astype(np.float64).T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    indices = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, indices, axis=1), indices, scores


def _check_top_k(queries, keys, k, **kwargs):
    scores, indices = top_k(queries, keys, k, **kwargs)
    ref_scores, _, all_scores = _reference(queries, keys, min(k, len(keys)))
    assert scores.shape == indices.shape == ref_scores.shape
    # Scores match the reference, and each returned index really has its score (robust to near-ties).
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(all_scores, indices, axis=1), scores, atol=1e-5)
    assert all(len(set(row)) == len(row) for row in indices.tolist())


def test_create_add_reopen_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "idx"
    index = Index.create(path, dim=8, model={"workdir": "runs/a", "step": 100})
    assert len(index) == 0 and index.ids == [] and index.embeddings.shape == (0, 8)
    first = rng.normal(size=(5, 8))
    index.add([f"a{i}" for i in range(5)], first * 3, [{"split": "train", "i": i} for i in range(5)])
    index.add(["b0", "b1"], rng.normal(size=(2, 8)))

    reopened = Index.open(path)
    assert len(reopened) == 7 and reopened.dim == 8
    assert reopened.ids == ["a0", "a1", "a2", "a3", "a4", "b0", "b1"]
    assert reopened.model == {"workdir": "runs/a", "step": 100}
    np.testing.assert_allclose(reopened.embeddings, index.embeddings)
    np.testing.assert_allclose(reopened.embeddings[:5], first / np.linalg.norm(first, axis=1, keepdims=True),
                               atol=1e-6)  # old rows kept, re-normalised
    np.testing.assert_allclose(np.linalg.norm(reopened.embeddings, axis=1), 1, atol=1e-6)
    assert reopened.metadata(3) == {"split": "train", "i": 3} and reopened.metadata(6) == {}
    assert reopened.position("b0") == 5
    with pytest.raises(UserError, match="'zz'"):
        reopened.position("zz")
    with pytest.raises(UserError, match="already exists"):
        Index.create(path, dim=8, model={})


def test_add_rejects_duplicates_wrong_dim_and_zero_rows(tmp_path):
    index = Index.create(tmp_path / "idx", dim=4, model={})
    index.add(["x", "y"], np.eye(4)[:2])
    with pytest.raises(UserError, match="duplicate id 'y'"):
        index.add(["z", "y", "x"], np.eye(4)[:3])
    with pytest.raises(UserError, match="duplicate id 'w'"):
        index.add(["w", "w"], np.eye(4)[:2])
    with pytest.raises(UserError, match="dim 4"):
        index.add(["z"], np.ones((1, 5)))
    with pytest.raises(UserError, match="zero"):
        index.add(["z"], np.zeros((1, 4)))
    with pytest.raises(UserError, match="must match"):
        index.add(["z", "v"], np.eye(4)[:1])
    assert Index.open(tmp_path / "idx").ids == ["x", "y"]


def test_open_rejects_missing_and_inconsistent_indexes(tmp_path):
    with pytest.raises(UserError, match="no index"):
        Index.open(tmp_path / "nothing")
    path = tmp_path / "idx"
    Index.create(path, dim=4, model={}).add(["a", "b"], np.eye(4)[:2])
    info = json.loads((path / "index.json").read_text())
    (path / "index.json").write_text(json.dumps({**info, "count": 3}))
    with pytest.raises(UserError, match="corrupt"):
        Index.open(path)
    (path / "index.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        Index.open(path)


@pytest.mark.parametrize("failing_call", [1, 2, 4])
def test_crash_during_add_leaves_the_old_index(tmp_path, monkeypatch, failing_call):
    path = tmp_path / "idx"
    index = Index.create(path, dim=4, model={"step": 1})
    index.add(["a", "b"], np.eye(4)[:2], [{"n": 0}, {"n": 1}])
    calls = []
    real_replace = os.replace

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == failing_call:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(index_lib.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        index.add(["c", "d"], np.eye(4)[2:], [{"n": 2}, {"n": 3}])
    monkeypatch.setattr(index_lib.os, "replace", real_replace)

    after = Index.open(path)
    assert after.ids == ["a", "b"] and len(after) == 2
    np.testing.assert_array_equal(after.embeddings, np.eye(4, dtype=np.float32)[:2])
    assert [after.metadata(i) for i in range(2)] == [{"n": 0}, {"n": 1}]
    after.add(["c"], np.eye(4)[2:3], [{"n": 2}])  # the interrupted add's leftovers are overwritten
    assert Index.open(path).ids == ["a", "b", "c"] and Index.open(path).metadata(2) == {"n": 2}


@pytest.mark.parametrize("engine", index_lib.ENGINES)
def test_top_k_matches_numpy_single_and_multi_block(engine):
    rng = np.random.default_rng(1)
    keys, queries = _unit_rows(rng, 1000, 16), rng.normal(size=(7, 16))
    _check_top_k(queries, keys, 10, engine=engine)
    _check_top_k(queries, keys, 10, block_size=128, engine=engine)  # jax: 8 blocks, the last one padded
    _check_top_k(queries, keys, 300, block_size=128, engine=engine)  # jax: k larger than a block
    scores, indices = top_k(queries, keys[:20], 50, block_size=8, engine=engine)  # k > N clamps to N
    assert scores.shape == (7, 20) and sorted(indices[0]) == list(range(20))


@pytest.mark.parametrize("engine", index_lib.ENGINES)
def test_top_k_ties_go_to_the_lower_index_and_zero_queries_fail(engine):
    keys = np.array([[1.0, 0], [0, 1], [1, 0], [1, 0], [0.6, 0.8], [1, 0]], np.float32)
    scores, indices = top_k(np.array([[2.0, 0]]), keys, 3, block_size=2, engine=engine)
    assert indices.tolist() == [[0, 2, 3]]  # 5 scores 1 too, and loses the tie
    np.testing.assert_allclose(scores, [[1, 1, 1]], atol=1e-6)
    scores, indices = top_k(np.array([[2.0, 0]]), keys, 5, block_size=2, engine=engine)
    assert indices.tolist() == [[0, 2, 3, 5, 4]]
    with pytest.raises(UserError, match="zero"):
        top_k(np.zeros((1, 2)), keys, 1, engine=engine)
    with pytest.raises(UserError, match="unknown search engine 'annoy'; choose faiss or jax"):
        top_k(np.ones((1, 2)), keys, 1, engine="annoy")


def test_faiss_where_jax_runs_on_the_cpu():
    assert index_lib.default_engine() == "faiss"  # the test install has faiss (the bench extra)


@pytest.mark.parametrize("engine", index_lib.ENGINES)
def test_top_k_over_a_million_keys(engine):  # about 2 s on one CPU core
    rng = np.random.default_rng(3)
    keys = np.concatenate([_unit_rows(rng, 250_000, 32) for _ in range(4)])
    _check_top_k(rng.normal(size=(8, 32)), keys, 10, block_size=131072, engine=engine)


def test_approximate_top_k_recall():
    rng = np.random.default_rng(4)
    keys, queries = _unit_rows(rng, 20_000, 32), rng.normal(size=(16, 32))
    _, approx = top_k(queries, keys, 20, block_size=8192, approximate=True)
    _, exact = top_k(queries, keys, 20, block_size=8192, engine="jax")
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approx.tolist(), exact.tolist())])
    assert recall >= 0.9


@pytest.mark.parametrize("engine", index_lib.ENGINES)
def test_top_k_exclude(engine):
    rng = np.random.default_rng(5)
    keys, queries = _unit_rows(rng, 500, 8), rng.normal(size=(3, 8))
    _, full = top_k(queries, keys, 20, engine=engine)
    excluded = [set(full[0, :5].tolist()), set(), {int(full[2, 0]), 499}]
    scores, indices = top_k(queries, keys, 10, block_size=64, exclude=excluded, engine=engine)
    assert indices[0].tolist() == full[0, 5:15].tolist()
    assert indices[1].tolist() == full[1, :10].tolist()
    assert indices[2].tolist() == [i for i in full[2].tolist() if i not in excluded[2]][:10]
    assert np.all(np.diff(scores, axis=1) <= 0)
    # When k plus the exclusions exceed N, rows are padded with -1 / -inf.
    scores, indices = top_k(queries[:1], keys[:4], 4, exclude=[{0, 1}], engine=engine)
    assert sorted(indices[0, :2].tolist()) == [2, 3] and indices[0, 2:].tolist() == [-1, -1]
    assert np.all(np.isneginf(scores[0, 2:]))
