"""Zero-shot video understanding on real clips, with no training on this data: Kinetics-400 I3D + MiniLM.

- `classify`: I3D's top-k Kinetics actions for each video.
- `KineticsBridge`: text -> video search by bridging I3D's class probabilities into MiniLM's sentence
  space. Each of the 400 label names is embedded as text; a video's embedding is the
  probability-weighted mean of its labels' embeddings, L2-normalised. A query is embedded by MiniLM,
  so "someone trimming a tree" finds a clip I3D calls "trimming trees" though the words differ.

Frames are read as `pretrained.read_clip` says (resampled to `fps`, then `num_frames` by `sampling`,
224 px centre crop). The frame choice changes the answer; the index records it.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from vlm_jax import pretrained
from vlm_jax.apps.predictor import Clip, ClipSource, decoded_files, video_files
from vlm_jax.data import video_io
from vlm_jax.errors import UserError

ENCODER = "kinetics_bridge"


@dataclasses.dataclass(frozen=True)
class FrameChoice:
    """Which frames of a real video I3D sees (see `pretrained.read_clip`)."""
    num_frames: int = 64
    sampling: str = "first"
    fps: float | None = 25.0

    def __post_init__(self):
        if self.sampling not in video_io.SAMPLING_MODES or self.sampling == "random_segment":
            raise UserError(f"frame sampling must be 'first' or 'uniform', got {self.sampling!r}")
        if self.num_frames < 8:
            raise UserError(f"I3D needs at least 8 frames, got {self.num_frames}")

    def read(self, path: str | Path) -> np.ndarray:
        return pretrained.read_clip(path, self.num_frames, self.sampling, self.fps)


def real_clips(paths: Sequence[str | Path], frames: FrameChoice) -> ClipSource:
    """The videos among `paths` (files, or every video in the folders), read lazily; unreadable files
    are skipped and listed in `skipped`."""
    return decoded_files(video_files(paths), lambda path: Clip(
        path.stem, frames.read(path), np.zeros(0, np.float32), {"source": "file", "path": str(path.absolute())}))


def classify(paths: Sequence[str | Path], frames: FrameChoice, k: int = 5) -> tuple[list[dict], ClipSource]:
    """Per readable video: {"id", "path", "top": [(label, probability), ...]}, and the source (its skips)."""
    source = real_clips(paths, frames)  # a missing path fails before the weights load
    classifier = pretrained.load_video_encoder(pretrained.I3D_KINETICS)
    results = [{"id": clip.id, "path": clip.metadata["path"], "top": classifier.top_k(clip.video[None], k)[0]}
               for clip in source.clips]
    return results, source


class KineticsBridge:
    """The search-index embedder (the same interface as `predictor.Predictor`) over I3D labels in MiniLM space."""
    batch_size = 1  # a 64 x 224 x 224 I3D clip is already a large batch for a CPU

    def __init__(self, frames: FrameChoice):
        self.frames = frames
        self.classifier = pretrained.load_video_encoder(pretrained.I3D_KINETICS)
        self.text = pretrained.load_text_encoder(pretrained.MINILM)

    @classmethod
    def from_description(cls, description: dict) -> "KineticsBridge":
        return cls(FrameChoice(int(description["num_frames"]), description["sampling"], description["fps"]))

    @property
    def dim(self) -> int:
        return self.text.dim

    def description(self) -> dict:
        return {"encoder": ENCODER, "video": pretrained.I3D_KINETICS, "text": pretrained.MINILM,
                **dataclasses.asdict(self.frames)}

    @functools.cached_property
    def label_embeddings(self) -> np.ndarray:
        return self.text.encode(list(self.classifier.labels))

    def clip_source(self, source: str | Sequence[str], limit: int = 0) -> ClipSource:
        """Video files and folders only (there is no data set split without a run); `limit` > 0 caps the count."""
        files = video_files([source] if isinstance(source, str) else source)
        return real_clips(files[:limit] if limit > 0 else files, self.frames)

    def embed_videos(self, clips: Iterable[Clip],
                     on_batch: Callable[[int], None] | None = None) -> tuple[list[Clip], np.ndarray]:
        done, rows = [], []
        for clip in clips:
            mixture = self.classifier.probabilities(clip.video[None]) @ self.label_embeddings
            rows.append(mixture / np.linalg.norm(mixture, axis=1, keepdims=True))
            done.append(clip)
            if on_batch:
                on_batch(1)
        if not rows:
            raise UserError("no videos to embed")
        return done, np.concatenate(rows).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            raise UserError("no text to embed")
        return self.text.encode(list(texts))

    def frames_of(self, metadata: dict) -> np.ndarray:
        return self.frames.read(metadata["path"])
