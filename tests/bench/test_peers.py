"""`vlm bench`'s peer sections in quick mode: structure and agreement only. Timings are never asserted (the
machine is shared); the heavier peers (ViViT, TimeSformer, I3D) run in `vlm bench` itself."""

import math

import pytest

from vlm_jax.apps import ivf
from vlm_jax.bench import peers

SIDES = [f"{side}_{stat}" for side in ("ours", "theirs") for stat in ("median", "min", "max")]


def _check_side_by_side(results: dict, name: str) -> None:
    for key in [*SIDES, "speedup"]:
        value = results[f"peers/{name}/{key}"]
        assert math.isfinite(value) and value > 0, (key, value)
    for side in ("ours", "theirs"):
        assert results[f"peers/{name}/{side}_min"] <= results[f"peers/{name}/{side}_median"] \
               <= results[f"peers/{name}/{side}_max"]
    assert results[f"peers/{name}/speedup"] == pytest.approx(
        results[f"peers/{name}/ours_median"] / results[f"peers/{name}/theirs_median"], rel=1e-12)


def test_interleaving_alternates_sides_after_warm_up():
    calls = []
    results, warm = peers.interleaved("fake", lambda: calls.append("a") or "ours",
                                      lambda: calls.append("b") or "theirs", items=4, rounds=3)
    assert calls == ["a", "b"] * 4 and warm == ("ours", "theirs")
    _check_side_by_side(results, "fake")


def test_peers_refuse_unknown_names_and_skip_missing_packages(monkeypatch):
    with pytest.raises(ValueError, match="unknown peers"):
        peers.peers(quick=True, only=("resnet",))
    monkeypatch.setitem(peers.REQUIRES, "search_top10", {"no_such_module_xyz": "no-such-package"})
    assert peers.peers(quick=True, only=("search_top10",)) == {"peers/skipped": 1}


def test_search_and_minilm_peers_agree_with_theirs():
    only = ("search_top10", "minilm_encode")
    missing = {name: peers.missing_packages(name) for name in only}
    if any(missing.values()):
        pytest.skip(f"peer packages not installed: {missing}")
    results = peers.peers(quick=True, only=only)
    assert results["peers/skipped"] == 0
    approximate = ("search_top10_ivf_random", "search_top10_ivf_clustered")
    measured = (*only, "search_top10_jax", *approximate)  # the search peer times both engines and the ivf
    for name in measured:
        _check_side_by_side(results, name)
    assert results["peers/search_top10/identical_top10"] == results["peers/search_top10_jax/identical_top10"] == 100
    assert results["peers/minilm_encode/max_abs_diff"] < 1e-5
    for name in approximate:
        timed_share = results[f"peers/{name}/nprobe_over_nlist"]
        assert 0 < timed_share <= min(ivf.MAX_CELL_SHARE, results[f"peers/{name}/calibrated_nprobe_over_nlist"])
    # calibrated on keys as queries, measured here on new queries: the clustered keys' neighbours sit in fewer
    # cells, and at most 1/8 of the cells find most of them
    assert results["peers/search_top10_ivf_clustered/calibrated_nprobe_over_nlist"] < \
        results["peers/search_top10_ivf_random/calibrated_nprobe_over_nlist"]
    assert results["peers/search_top10_ivf_clustered/recall_at_10"] >= 0.9
    expected = {f"peers/{name}/{key}" for name in measured for key in [*SIDES, "speedup"]}
    expected |= {"peers/search_top10/identical_top10", "peers/search_top10_jax/identical_top10",
                 "peers/minilm_encode/max_abs_diff", "peers/skipped"}
    expected |= {f"peers/{name}/{key}" for name in approximate
                 for key in ("recall_at_10", "nprobe_over_nlist", "calibrated_nprobe_over_nlist")}
    assert set(results) == expected
