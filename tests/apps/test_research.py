"""The research table: one row per variant from its runs' results.json files, a dash where a run or a
metric is missing."""

import json

from vlm_jax.apps import research


def _write(out, variant, stage, results):
    path = out / variant / stage / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))


def test_the_table_reads_every_stage_and_the_explanations(tmp_path):
    _write(tmp_path, "vivit_joint", "pretrain", {"test/retrieval/t2v_R@1": 4.94, "test_novel/retrieval/t2v_R@1": 6.8,
                                                 "test/explain/gradient_pointing_game": 67.68,
                                                 "test/explain/gradient_random_pointing_game": 38.28,
                                                 "test/explain/attention_pointing_game": 5.42,
                                                 "test/explain/attention_random_pointing_game": 30.08})
    _write(tmp_path, "vivit_joint", "qa", {"test/qa/acc": 24.5, "test/qa/acc_direction": 31.0})
    _write(tmp_path, "vivit_joint", "caption", {"test/caption/CIDEr": 127.66, "test/caption/distinct": 41.25})
    _write(tmp_path, "fusion_dual", "pretrain", {"test/retrieval/t2v_R@1": 5.5,
                                                 "test/explain/gradient_pointing_game": 50.0})
    header, rule, *rows = research.table(tmp_path, ["vivit_joint", "fusion_dual", "i3d"]).splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert rule.count("---") == len(columns)
    cells = {row.split("|")[1].strip(): dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
             for row in rows}
    assert list(cells) == ["vivit_joint", "fusion_dual", "i3d"]
    joint = cells["vivit_joint"]
    assert (joint["test t2v R@1"], joint["test_novel t2v R@1"], joint["test QA acc"]) == ("4.9", "6.8", "24.5")
    assert (joint["test direction"], joint["test order"], joint["test CIDEr"]) == ("31.0", "-", "127.7")
    assert (joint["test distinct captions"], joint["test_novel distinct captions"]) == ("41.2", "-")
    assert (joint["test pointing grad"], joint["test random init grad"]) == ("67.7", "38.3")
    assert (joint["test pointing attn"], joint["test random init attn"]) == ("5.4", "30.1")
    assert cells["fusion_dual"]["test pointing grad"] == "50.0" and cells["fusion_dual"]["test pointing attn"] == "-"
    assert set(cells["i3d"].values()) == {"i3d", "-"}


def test_wall_times_add_up_over_a_stage_s_attempts_and_fill_their_own_table(tmp_path, monkeypatch):
    """A stage stopped and resumed counts both attempts; the total needs every stage."""
    clock = iter([0.0, 100.0, 500.0, 530.0, 1000.0, 1240.0])  # (start, end) of three runs
    monkeypatch.setattr(research.time, "perf_counter", lambda: next(clock))
    codes = iter([1, 0, 0])
    monkeypatch.setattr(research.subprocess, "call", lambda *args, **kwargs: next(codes))
    variant, messages = tmp_path / "cnn2d", []
    variant.mkdir()
    assert research._timed(variant, "pretrain", ["train"], variant / "train.log", messages.append).startswith("failed")
    assert research._timed(variant, "pretrain", ["train"], variant / "train.log", messages.append) == "ok"
    assert json.loads((variant / research.WALL_FILE).read_text()) == {"pretrain": 130.0}
    research._timed(variant, "qa", ["train"], variant / "train.log", messages.append)
    assert messages[-1] == "cnn2d/qa: exit 0 after 240 s"
    header, rule, row, missing = research.wall_table(tmp_path, ["cnn2d", "i3d"]).splitlines()
    assert header == "| variant | pretrain (s) | qa (s) | caption (s) | explain (s) | total (min) |"
    assert row == "| cnn2d | 130 | 240 | - | - | - |" and missing == "| i3d | - | - | - | - | - |"
    (variant / research.WALL_FILE).write_text(json.dumps({"pretrain": 600, "qa": 240, "caption": 500, "explain": 10}))
    assert research.wall_table(tmp_path, ["cnn2d"]).splitlines()[2] == "| cnn2d | 600 | 240 | 500 | 10 | 22.5 |"


def test_extra_overrides_reach_only_the_variants_that_choose_their_encoder():
    extra = ["model.video.vivit.depth=1", "model.video.cnn2d.grid=2", "model.text.bert.depth=1", "train.batch_size=8"]
    assert research.for_chosen_encoders("tiny", research.VARIANTS["cnn2d"][0], extra) == [
        "model.video.cnn2d.grid=2", "model.text.bert.depth=1", "train.batch_size=8"]
    assert research.for_chosen_encoders("tiny", research.VARIANTS["vivit_joint"][0], extra) == [
        "model.video.vivit.depth=1", "model.text.bert.depth=1", "train.batch_size=8"]
    # a variant that keeps the preset's video encoder (cnn2d at cpu) and drops the audio tower
    assert research.for_chosen_encoders("cpu", research.VARIANTS["no_audio"][0],
                                        [*extra, "model.audio.audio_transformer.depth=1"]) == [
        "model.video.cnn2d.grid=2", "model.text.bert.depth=1", "train.batch_size=8"]

