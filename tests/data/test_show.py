"""`show` on a small moving_shapes build: statistics agree with the generator, pictures have the promised layout."""

import collections
import json

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import builders, features, show
from vlm_jax.data import moving_shapes as ms
from vlm_jax.data.moving_shapes_language import NUM_CAPTIONS
from vlm_jax.data.moving_shapes_render import RenderSpec
from vlm_jax.data.moving_shapes_tfds import SIZES
from vlm_jax.errors import UserError

SPLIT_SIZES = {"train": 12, "validation": 4, "test": 4, "test_novel": 4}
NUM_CLIPS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(SIZES, "show_test", SPLIT_SIZES)
        request = features.BuildRequest("moving_shapes", str(tmp_path_factory.mktemp("data")), size="show_test")
        return builders.build(request)


@pytest.fixture(scope="module")
def shown(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("show")
    return show.show(dataset, out, num_clips=NUM_CLIPS), out


@pytest.fixture(scope="module")
def first_clips(dataset):
    source = builders.open_dataset(dataset).as_data_source(split="train")
    return [source[i] for i in range(NUM_CLIPS)]


def test_stats_count_every_split_and_match_the_generator(shown):
    stats, out = shown
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["video_shape"] == [16, 64, 64, 3]
    assert stats["audio"] == {"num_samples": 32000, "sample_rate": 16000, "seconds": 2.0}
    for split, size in SPLIT_SIZES.items():
        counts = stats["splits"][split]
        assert counts["total"] == counts["scanned"] == counts["clips_with_audio"] == size
        assert sum(counts["num_objects"].values()) == sum(counts["sounds"].values()) == size
        assert sum(counts["timing"].values()) == size
        assert counts["captions_per_clip"] == NUM_CAPTIONS
        assert counts["questions"]["colour"] == counts["questions"]["sound"] == size
        assert sum(counts["answers"]["sound"].values()) == size

    train = stats["splits"]["train"]
    scenes = [ms.make_clip(0, "train", i, RenderSpec()).scene for i in range(SPLIT_SIZES["train"])]
    assert train["sounds"] == dict(sorted(collections.Counter(s.sound for s in scenes).items()))
    assert train["num_objects"] == dict(sorted(collections.Counter(str(len(s.objects)) for s in scenes).items()))
    assert train["motions"] == dict(sorted(collections.Counter(o.motion for s in scenes for o in s.objects).items()))
    assert train["timing"].get("sequential", 0) == sum(s.sequential for s in scenes)
    # direction and order twins of each of the captions, and one sound twin per clip
    assert train["hard_negatives"]["direction"] == NUM_CAPTIONS * sum(bool(s.movers) for s in scenes)
    assert train["hard_negatives"].get("order", 0) == NUM_CAPTIONS * sum(s.sequential for s in scenes)
    assert train["hard_negatives"]["sound"] == len(scenes)
    assert 0 < train["caption_words"]["mean"] <= train["caption_words"]["max"]


def test_stats_scan_is_capped_and_says_so(dataset, monkeypatch):
    monkeypatch.setattr(show, "MAX_SCANNED", 5)
    train = show.split_stats(builders.open_dataset(dataset), "train")
    assert (train["scanned"], train["total"]) == (5, SPLIT_SIZES["train"])
    assert sum(train["sounds"].values()) == 5


def test_samples_list_every_caption_negative_and_question(shown, first_clips):
    text = (shown[1] / "samples.md").read_text()
    assert text.count("\n## ") == NUM_CLIPS
    clip = first_clips[0]
    assert f"## 1. {clip['id'].decode()}" in text
    for caption in clip["captions"]:
        assert caption.decode() in text
    for kind, negative in zip(clip["hard_negative_kinds"], clip["hard_negatives"]):
        assert f"[{kind.decode()}] {negative.decode()}" in text
    for question, answer in zip(clip["questions"], clip["answers"]):
        assert f"| {question.decode()} | {answer.decode()} |" in text


def test_contact_sheet_has_one_row_per_clip_of_upscaled_frames(dataset, shown, first_clips, tmp_path):
    show.show(dataset, tmp_path, num_clips=2)
    with Image.open(shown[1] / "contact_sheet.png") as four_file, Image.open(tmp_path / "contact_sheet.png") as two:
        four = four_file.convert("RGB")
    row = (four.height - two.height) // 2
    header = two.height - 2 * row
    assert four.height == header + NUM_CLIPS * row
    assert 0 < header < row and row > show.SHEET_FRAME_PX  # a frame plus room for the caption
    assert four.width >= show.SHEET_FRAMES * show.SHEET_FRAME_PX

    # The first tile is frame 0 of clip 0 at 2x nearest, apart from the thin box outlines drawn on it.
    tile = np.asarray(four)[header:header + 128, :128]
    expected = first_clips[0]["video"][0].repeat(2, axis=0).repeat(2, axis=1)
    assert np.mean(np.all(tile == expected, axis=-1)) > 0.9
    assert np.mean(np.all(tile == 255, axis=-1)) > 0.005  # the box outlines are there


def test_gif_plays_every_frame_in_a_loop(shown):
    with Image.open(shown[1] / "clips.gif") as gif:
        assert gif.n_frames == 16
        assert gif.info["loop"] == 0
        assert abs(gif.info["duration"] - 125) <= 10  # GIF stores centiseconds
        assert gif.width == NUM_CLIPS * show.GIF_TILE_PX + (NUM_CLIPS - 1) * show.GAP


def test_audio_figure_titles_each_clip_with_its_sound(shown, first_clips):
    with Image.open(shown[1] / "audio.png") as written:
        assert written.height > written.width / 2  # one waveform/spectrogram row for each of four clips
    figure = show.audio_figure(first_clips[:3], 16000)
    titles = [axis.get_title() for axis in figure.axes]
    assert len(titles) == 6
    for clip in first_clips[:3]:
        assert titles.count(f"{clip['id'].decode()}: {clip['sound'].decode()}") == 2


def test_sources_without_moving_shapes_labels_still_render(first_clips):
    moving_shapes_only = ("boxes", "sound", "sequential")
    plain = [{k: v for k, v in clip.items() if not k.startswith("object_") and k not in moving_shapes_only}
             for clip in first_clips]
    text = show.samples_markdown(plain, "plain")
    assert "objects:" not in text and plain[0]["captions"][0].decode() in text
    boxed, unboxed = (np.asarray(show.contact_sheet(clips)) for clips in (first_clips, plain))
    assert boxed.shape == unboxed.shape
    differs = np.any(boxed != unboxed, axis=-1)
    assert differs.any() and np.all(boxed[differs] == 255)  # only the box outlines are missing


def test_text_that_is_not_utf8_is_shown_replaced(first_clips):
    """`show` decodes text as the pipeline does: bytes that are not UTF-8 become U+FFFD instead of raising."""
    clip = dict(first_clips[0], id=b"train/\xff", captions=[b"a caf\xe9 circle moves left"])
    text = show.samples_markdown([clip], "bad bytes")
    assert "## 1. train/\ufffd" in text and "1. a caf\ufffd circle moves left" in text
    assert show.contact_sheet([clip]).height > show.SHEET_FRAME_PX


def test_unknown_split_is_a_user_error(dataset, tmp_path):
    with pytest.raises(UserError, match="no split 'dev'"):
        show.show(dataset, tmp_path, split="dev")
