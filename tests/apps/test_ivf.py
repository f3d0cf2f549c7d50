"""The inverted file of approximate search: calibrated recall on clustered and on structureless keys, its
search against exact search, and its life beside an index (saved, reused, rebuilt after an add)."""

import json

import numpy as np
import pytest

from vlm_jax.apps import ivf
from vlm_jax.apps.index import Index, top_k
from vlm_jax.errors import UserError


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng, n, dim=16, centres=64):
    """Points around `centres` random directions: the neighbours of a point share its cluster."""
    means = rng.normal(size=(centres, dim))
    return _unit(means[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim)))


def _recall(found, exact):
    return np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(found.tolist(), exact.tolist())])


def test_clustered_keys_need_few_cells_and_keep_their_recall():
    rng = np.random.default_rng(0)
    points = _clustered(rng, 20_064)
    keys, queries = points[:20_000], points[20_000:]
    inverted = ivf.InvertedFile.build(keys)
    assert inverted.nlist == min(round(4 * np.sqrt(20_000)), 20_000 // 39) and inverted.count == 20_000
    assert inverted.calibrated_recall >= 0.95 and inverted.nprobe <= inverted.nlist // 8
    scores, found = inverted.search(queries, 10)
    _, exact = top_k(queries, keys, 10)
    assert _recall(found, exact) >= 0.9  # queries it was not calibrated on
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, keys[found]), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_structureless_keys_make_calibration_visit_more_cells():
    rng = np.random.default_rng(1)
    keys = _unit(rng.normal(size=(20_000, 16)))
    clustered = ivf.InvertedFile.build(_clustered(rng, 20_000))
    structureless = ivf.InvertedFile.build(keys)
    assert structureless.calibrated_recall >= 0.95 and structureless.nprobe > clustered.nprobe
    # every cell visited is exact search
    _, everything = structureless.search(keys[:8], 10, nprobe=structureless.nlist)
    _, exact = top_k(keys[:8], keys, 10)
    assert _recall(everything, exact) == 1.0
    with pytest.raises(UserError, match="nprobe must be between 1 and"):
        structureless.search(keys[:1], 10, nprobe=structureless.nlist + 1)
    with pytest.raises(ValueError, match="at least 4096 keys"):
        ivf.InvertedFile.build(keys[:100])


def test_an_index_keeps_its_inverted_file_until_it_grows(tmp_path):
    rng = np.random.default_rng(2)
    points = _clustered(rng, 12_000)
    index = Index.create(tmp_path / "index", 16, {"kind": "test"})
    index.add([f"clip{i}" for i in range(10_000)], points[:10_000])
    queries = points[10_000:10_008]
    _, exact = index.search(queries, 10)
    _, approximate = index.search(queries, 10, approximate=True)
    assert _recall(approximate, exact) >= 0.9
    saved = tmp_path / "index" / "ivf.faiss"
    written = saved.stat().st_mtime_ns
    reopened = Index.open(tmp_path / "index")
    _, again = reopened.search(queries, 10, approximate=True)
    assert again.tolist() == approximate.tolist() and saved.stat().st_mtime_ns == written  # loaded, not rebuilt
    saved.write_bytes(b"not a faiss index")  # damaged: built again rather than trusted
    _, rebuilt = Index.open(tmp_path / "index").search(queries, 10, approximate=True)
    assert _recall(rebuilt, exact) >= 0.9 and index.saved_inverted_file() is not None
    reopened.add([f"new{i}" for i in range(2_000)], points[10_000:])
    _, grown = reopened.search(queries, 10, approximate=True)
    assert reopened.saved_inverted_file().count == 12_000  # rebuilt over the new rows, saved
    info = json.loads(saved.with_name("ivf.faiss.json").read_text())
    with open(saved, "rb") as f:  # as many other keys: not theirs
        assert ivf.InvertedFile.read(f, info, reopened.embeddings[::-1]) is None
    assert set(range(10_000, 10_008)) & set(grown[:, 0].tolist())  # the added rows are found


def test_small_indexes_search_exactly_and_refuse_nprobe(tmp_path):
    rng = np.random.default_rng(3)
    index = Index.create(tmp_path / "small", 8, {"kind": "test"})
    index.add([f"clip{i}" for i in range(100)], _unit(rng.normal(size=(100, 8))))
    queries = rng.normal(size=(4, 8))
    assert index.search(queries, 5, approximate=True)[1].tolist() == index.search(queries, 5)[1].tolist()
    with pytest.raises(UserError, match="nprobe applies to approximate search"):
        index.search(queries, 5, approximate=True, nprobe=4)
    assert not (tmp_path / "small" / "ivf.faiss").exists()


def test_an_index_searches_exactly_where_the_inverted_file_would_be_slower(tmp_path):
    rng = np.random.default_rng(4)
    keys = _unit(rng.normal(size=(8192, 128)))  # no structure: the calibration needs most of the cells
    index = Index.create(tmp_path / "index", 128, {"kind": "test"})
    index.add([f"clip{i}" for i in range(len(keys))], keys)
    queries = rng.normal(size=(8, 128))
    scores, found = index.search(queries, 10, approximate=True)
    inverted = index.saved_inverted_file()
    assert not inverted.faster_than_exact and inverted.nprobe > ivf.MAX_CELL_SHARE * inverted.nlist
    exact_scores, exact = index.search(queries, 10)
    assert found.tolist() == exact.tolist() and np.array_equal(scores, exact_scores)
    _, probed = index.search(queries, 10, approximate=True, nprobe=1)  # a given nprobe is obeyed
    assert _recall(probed, exact) < 1.0
