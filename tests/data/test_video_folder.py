"""video_folder: builds from folders of written moving_shapes clips, in every captions format, with bad input."""

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlm_jax.data import builders, features, video_folder, video_io
from vlm_jax.data import moving_shapes as ms
from vlm_jax.data.moving_shapes_render import RenderSpec
from vlm_jax.errors import UserError

NUM_CLIPS = 6
NUM_FRAMES, IMAGE_SIZE = 8, 32


def write_clips(folder: Path, count: int = NUM_CLIPS) -> dict[str, ms.Clip]:
    """Clips video0..; the odd ones without a sound track."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = {}
    for i in range(count):
        clip = ms.make_clip(0, "train", i, RenderSpec())
        video_io.write_video(folder / f"video{i}.mp4", clip.video, 8, None if i % 2 else clip.audio)
        clips[f"video{i}"] = clip
    return clips


def build(tmp_path: Path, source: Path, **request) -> tfds.core.DatasetBuilder:
    path = builders.build(features.BuildRequest(name="video_folder", data_dir=str(tmp_path / "data"),
                                                source=str(source), num_frames=NUM_FRAMES, image_size=IMAGE_SIZE,
                                                **request))
    return builders.open_dataset(path)


def read_all(dataset) -> dict[str, dict]:
    """Every example of every split by id, with the split it came from."""
    examples = {}
    for split in dataset.info.splits:
        source = dataset.as_data_source(split=split)
        for i in range(len(source)):
            example = dict(source[i], split=split)
            examples[example["id"].decode()] = example
    return examples


def texts(values) -> list[str]:
    return [v.decode() for v in values]


def test_msrvtt_captions_with_bad_files_skipped_and_counted(tmp_path, caplog):
    source = tmp_path / "clips"
    clips = write_clips(source)
    good = (source / "video0.mp4").read_bytes()
    (source / "truncated.mp4").write_bytes(good[:len(good) // 2])
    (source / "empty.mp4").write_bytes(b"")
    (source / "text.mp4").write_text("this is not a video\n")
    (source / "uncaptioned.mp4").write_bytes(good)
    sentences = [{"video_id": vid, "caption": c} for vid, clip in clips.items() for c in clip.captions]
    sentences += [{"video_id": vid, "caption": "unreadable"} for vid in ("truncated", "empty", "text", "gone")]
    (source / "captions.json").write_text(json.dumps({"videos": [{"video_id": v} for v in clips],
                                                      "sentences": sentences}))

    with caplog.at_level(logging.WARNING, logger=video_folder.__name__):
        dataset = build(tmp_path, source)
    warned = caplog.text
    assert all(name in warned for name in ("truncated.mp4", "empty.mp4", "text.mp4", "uncaptioned.mp4", "'gone'"))

    metadata = dataset.info.metadata
    assert metadata["skipped"] == {"corrupt_video": 3, "no_captions": 1, "missing_video": 1, "non_utf8_captions": 0}
    assert (metadata["answers"], metadata["question_types"], metadata["sample_rate"]) == ([], [], 16000)
    assert set(dataset.info.splits) == {video_folder.assign_split(0, video_id) for video_id in clips}  # none empty
    examples = read_all(dataset)
    assert sorted(examples) == sorted(clips)
    num_samples = round(video_folder.MAX_AUDIO_S * 16000)
    for video_id, example in examples.items():
        clip = clips[video_id]
        assert example["split"] == video_folder.assign_split(0, video_id)
        assert texts(example["captions"]) == clip.captions
        assert len(example["hard_negatives"]) == len(example["questions"]) == 0
        assert example["video"].shape == (NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3)
        expected = video_io.decode_video(source / f"{video_id}.mp4", NUM_FRAMES, IMAGE_SIZE).frames
        np.testing.assert_array_equal(example["video"], expected)
        audio = example["audio"]
        assert audio.shape == (num_samples,) and audio.dtype == np.int16
        if example["has_audio"]:  # the whole 2 s clip, then zeros up to 10 s
            assert np.corrcoef(audio[:len(clip.audio)], clip.audio)[0, 1] > 0.9
            assert not audio[len(clip.audio) + 1024:].any()
        else:
            assert int(video_id[-1]) % 2 == 1 and not audio.any()


def test_qa_list_format_fills_questions_and_vocabulary(tmp_path):
    source = tmp_path / "qa"
    clips = write_clips(source, 3)
    entries = [{"video_id": vid, "captions": clip.captions[:2],
                "qa": [{"question": q, "answer": a, "type": t, "choices": c}
                       for q, a, t, c in zip(clip.questions, clip.answers, clip.question_types, clip.choices)]}
               for vid, clip in clips.items()]
    entries[0]["qa"].append({"question": "is it raining?", "answer": "no"})  # type and choices default
    (source / "captions.json").write_text(json.dumps(entries))
    examples = read_all(dataset := build(tmp_path, source))

    first = examples["video0"]
    assert texts(first["questions"])[-1] == "is it raining?"
    assert texts(first["question_types"])[-1] == "open" and texts(first["choices"])[-1] == ""
    assert texts(first["choices"])[0] == "|".join(clips["video0"].choices[0])
    for video_id, clip in clips.items():
        assert texts(examples[video_id]["captions"]) == clip.captions[:2]
        assert texts(examples[video_id]["answers"])[:len(clip.answers)] == clip.answers
    answers = {a for clip in clips.values() for a in clip.answers} | {"no"}
    types = {t for clip in clips.values() for t in clip.question_types} | {"open"}
    assert dataset.info.metadata["answers"] == sorted(answers)
    assert dataset.info.metadata["question_types"] == sorted(types)


def test_csv_captions_that_are_not_utf8_are_replaced_and_counted(tmp_path):
    source = tmp_path / "csv"
    clips = write_clips(source, 2)
    with open(source / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "caption"])
        writer.writerows([vid, c] for vid, clip in clips.items() for c in clip.captions)
    with open(source / "captions.csv", "ab") as f:
        f.write("video1,un caf\xe9 rouge\n".encode("latin-1"))  # one caption in the wrong encoding
    dataset = build(tmp_path, source)
    assert dataset.info.metadata["skipped"]["non_utf8_captions"] == 1
    captions = texts(read_all(dataset)["video1"]["captions"])
    assert captions[:-1] == clips["video1"].captions and captions[-1] == "un caf\ufffd rouge"


def test_config_names_separate_folders_and_seeds(tmp_path):
    names = []
    for folder, seed in (("a/My Clips", 0), ("b/My Clips", 0), ("a/My Clips", 1)):
        source = tmp_path / folder
        source.mkdir(parents=True, exist_ok=True)
        (source / "captions.csv").write_text("video_id,caption\n")
        request = features.BuildRequest(name="video_folder", data_dir=str(tmp_path), source=str(source), seed=seed)
        names.append(video_folder.builder(request).builder_config.name)
    assert len(set(names)) == 3
    assert all(re.fullmatch(r"my_clips_[0-9a-f]{8}_64px_16f_seed[01]", name) for name in names), names


def test_split_assignment_is_stable_and_roughly_80_10_10():
    splits = [video_folder.assign_split(0, f"video{i}") for i in range(2000)]
    assert splits == [video_folder.assign_split(0, f"video{i}") for i in range(2000)]
    counts = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert abs(counts["train"] - 0.8) < 0.03 and abs(counts["validation"] - 0.1) < 0.02
    assert splits != [video_folder.assign_split(1, f"video{i}") for i in range(2000)]


@pytest.mark.parametrize("content, problem", [
    ('{"sentences": [', "not valid JSON"),
    ('{"sentences": [{"video_id": "video0"}]}', "sentences[0].caption should be a string"),
    ('[{"video_id": "video0", "qa": [{"question": "why?"}]}]', "[0].qa[0].answer should be a string"),
    ('{"clips": []}', "should be a list of videos"),
])
def test_malformed_captions_are_user_errors(tmp_path, content, problem):
    source = tmp_path / "clips"
    write_clips(source, 1)
    (source / "captions.json").write_text(content)
    with pytest.raises(UserError, match=re.escape(problem)):
        build(tmp_path, source)


def test_missing_captions_and_nothing_usable_are_user_errors(tmp_path):
    source = tmp_path / "clips"
    source.mkdir()
    (source / "video0.mp4").write_text("not a video")
    with pytest.raises(UserError, match="no captions file"):
        build(tmp_path, source)
    with pytest.raises(UserError, match="not found"):
        build(tmp_path, source, captions=str(tmp_path / "nowhere.csv"))
    (source / "captions.csv").write_text("video_id,caption\nvideo0,a clip\n")
    with pytest.raises(UserError, match="no usable videos"):
        build(tmp_path, source)
    assert not list((tmp_path / "data").glob("video_folder/*/*"))  # no prepared or half-written data set
