"""Real video files in and out with PyAV: fixed-size clips for the data builders, small mp4s for tests.

Every decoding failure becomes a one-line `VideoDecodeError` naming the file, so a
data build can skip a bad file and count it instead of crashing on a raw PyAV error.
"""

from __future__ import annotations

import dataclasses
import fractions
import os

import av
import numpy as np
from av.video.reformatter import VideoReformatter

SAMPLING_MODES = ("uniform", "random_segment", "first")
# PyAV raises its own FFmpegError family, plus OSError/EOFError from the file layer and
# UnicodeDecodeError from malformed container metadata.
_DECODE_FAILURES = (av.FFmpegError, OSError, EOFError, UnicodeDecodeError)


class VideoDecodeError(ValueError):
    """A file that cannot be read as video: unreadable, corrupt, empty or without a video stream."""


@dataclasses.dataclass
class DecodedVideo:
    frames: np.ndarray  # (num_frames, image_size, image_size, 3) uint8
    audio: np.ndarray | None  # (samples,) float32 mono in [-1, 1]; None when the file has no audio stream
    source_fps: float
    num_source_frames: int
    duration_s: float


def sample_frame_indices(num_available: int, num_frames: int, mode: str,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """Sorted indices into `num_available` frames, one per equal segment; repeats when frames are too few.

    "uniform" takes each segment's centre (deterministic, for evaluation and storage);
    "random_segment" takes a random frame inside each segment (TSN-style, for training);
    "first" takes the first `num_frames` in a row (DeepMind's I3D evaluation), as many as there are.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"unknown frame sampling {mode!r}; choose one of {', '.join(SAMPLING_MODES)}")
    if num_available < 1 or num_frames < 1:
        raise ValueError(f"need at least one frame available and requested, got {num_available} and {num_frames}")
    segment = np.arange(num_frames, dtype=np.int64)
    if mode == "uniform":
        return (2 * segment + 1) * num_available // (2 * num_frames)
    if mode == "first":  # a shorter clip plays slower: each frame repeats, in order
        return segment if num_available >= num_frames else segment * num_available // num_frames
    if rng is None:
        raise ValueError("random_segment sampling needs an rng")
    starts = segment * num_available // num_frames
    # A segment shorter than one frame holds no frame of its own and repeats the frame at its start.
    ends = np.maximum((segment + 1) * num_available // num_frames, starts + 1)
    return rng.integers(starts, ends)


def decode_video(path: str | os.PathLike, num_frames: int, image_size: int, sampling: str = "uniform",
                 fps: float | None = None, rng: np.random.Generator | None = None,
                 sample_rate: int = 16000) -> DecodedVideo:
    """`num_frames` square frames (short side resized to `image_size`, centre-cropped) and the mono sound.

    With `fps`, the clip is first resampled to that frame rate (nearest frame per 1/fps step),
    so the sampled frames are spaced in time rather than in source frames. Audio is the whole
    track from its first sample, resampled to `sample_rate`.
    """
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"unknown frame sampling {sampling!r}; choose one of {', '.join(SAMPLING_MODES)}")
    if sampling == "random_segment" and rng is None:
        raise ValueError("random_segment sampling needs an rng")
    if num_frames < 1 or image_size < 1 or (fps is not None and fps <= 0):
        raise ValueError(f"num_frames, image_size and fps must be positive, got {num_frames}, {image_size}, {fps}")
    try:
        times, source_fps = _frame_times(path)
        duration_s = float(times[-1]) + 1.0 / source_fps
        if fps is None:
            indices = sample_frame_indices(len(times), num_frames, sampling, rng)
        else:
            timeline = _nearest_frames(times, np.arange(max(1, int(duration_s * fps + 1e-6))) / fps)
            indices = timeline[sample_frame_indices(len(timeline), num_frames, sampling, rng)]
        frames, audio = _decode(path, indices, image_size, sample_rate)
    except VideoDecodeError:
        raise
    except _DECODE_FAILURES as error:  # FFmpegError and OSError carry the reason without the path in strerror
        reason = " ".join(str(getattr(error, "strerror", None) or error).split()) or type(error).__name__
        raise VideoDecodeError(f"{os.fspath(path)}: {reason}") from error
    return DecodedVideo(frames=frames, audio=audio, source_fps=source_fps, num_source_frames=len(times),
                        duration_s=duration_s)


def _frame_times(path) -> tuple[np.ndarray, float]:
    """Presentation times (s, from 0) of every video frame, read by demuxing only, and the frame rate.

    Demuxing is cheap next to decoding, and it gives the true frame count where the
    container header has none (webm, mkv) or a wrong one.
    """
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"{os.fspath(path)}: empty file")
    with av.open(os.fspath(path), metadata_errors="ignore") as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{os.fspath(path)}: no video stream")
        stream = container.streams.video[0]
        stamps = [packet.pts if packet.pts is not None else packet.dts
                  for packet in container.demux(stream) if packet.size]
        stamps = np.sort(np.array([s for s in stamps if s is not None], dtype=np.int64))
        if not len(stamps):
            raise VideoDecodeError(f"{os.fspath(path)}: no video frames")
        times = (stamps - stamps[0]) * float(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            return times, float(rate)
        if len(times) > 1 and times[-1] > 0:
            return times, (len(times) - 1) / float(times[-1])
        raise VideoDecodeError(f"{os.fspath(path)}: unknown frame rate")


def _nearest_frames(times: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """For each time in `steps`, the index of the frame whose time is nearest."""
    if len(times) == 1:
        return np.zeros(len(steps), np.int64)
    right = np.clip(np.searchsorted(times, steps), 1, len(times) - 1)
    left = right - 1
    return np.where(steps - times[left] <= times[right] - steps, left, right)


def _decode(path, indices: np.ndarray, image_size: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One decoding pass: converts only the wanted frames, and stops early when there is no audio to read.

    A wanted frame the decoder never delivered (a damaged tail) is replaced by the last frame decoded.
    """
    frames: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    with av.open(os.fspath(path), metadata_errors="ignore") as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        pixel_aspect = float(video.sample_aspect_ratio or 1)  # unknown (None or 0) means square pixels
        reformatter = VideoReformatter()  # one per clip keeps its scaler; a fresh one per frame costs 2x
        sound = container.streams.audio[0] if container.streams.audio else None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate) if sound else None
        count, last = 0, None
        for packet in container.demux(*([video, sound] if sound else [video])):
            for frame in packet.decode():
                if packet.stream.index != video.index:
                    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
                    continue
                if len(frames) < len(indices) and indices[len(frames)] <= count:
                    image = _square(reformatter, frame, image_size, pixel_aspect)
                    while len(frames) < len(indices) and indices[len(frames)] <= count:
                        frames.append(image)
                last, count = frame, count + 1
            if sound is None and len(frames) == len(indices):
                break
        if last is None:
            raise VideoDecodeError(f"{os.fspath(path)}: no decodable video frames")
        if len(frames) < len(indices):
            image = _square(reformatter, last, image_size, pixel_aspect)
            frames.extend([image] * (len(indices) - len(frames)))
        if resampler is not None:
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    audio = None
    if sound is not None:
        audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return np.stack(frames), audio


def _square(reformatter: VideoReformatter, frame: av.VideoFrame, size: int, pixel_aspect: float) -> np.ndarray:
    """Resize the short side to `size` at the displayed (not stored) aspect, then centre-crop to size x size.

    swscale's bilinear widens its kernel when shrinking, so it does not alias, and it is 2x faster than "AREA".
    """
    width = frame.width * pixel_aspect
    scale = size / min(width, frame.height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(frame.height * scale))
    image = reformatter.reformat(frame, width=new_width, height=new_height, format="rgb24",
                                 interpolation="BILINEAR").to_ndarray()
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return image[top:top + size, left:left + size]


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, audio: np.ndarray | None = None,
                sample_rate: int = 16000) -> None:
    """Encode frames (T, H, W, 3) uint8 as H.264 yuv420p mp4, with optional mono AAC sound.

    `audio` is int16, or float in [-1, 1]. H and W must be even (yuv420p halves the chroma planes).
    The sound gets explicit timestamps so the muxer records AAC's 1024-sample priming and
    decoders drop it, keeping sound and pictures aligned.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be a non-empty uint8 array (T, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even height and width, got {height}x{width}; crop or pad the frames")
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, layout="mono") if audio is not None else None
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            samples = np.asarray(audio)
            samples = samples / 32768.0 if samples.dtype == np.int16 else np.clip(samples, -1.0, 1.0)
            chunk = av.AudioFrame.from_ndarray(samples.astype(np.float32).reshape(1, -1), format="flt", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = sample_rate, 0, fractions.Fraction(1, sample_rate)
            container.mux(sound.encode(chunk))
            container.mux(sound.encode())
