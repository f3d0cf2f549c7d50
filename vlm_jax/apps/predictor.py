"""A trained model as a set of batched, jitted functions over clips and texts: what video search,
recommendation, captioning and question answering run on.

    predictor = Predictor.load("runs/pretrain")
    source = clip_source(predictor.run, "test")         # a split, or video files / folders
    clips, video_emb = predictor.embed_videos(source.clips)   # [N, E], unit norm
    text_emb = predictor.embed_texts(["a red circle moves left"])

Clips go through the model in batches of the run's `train.batch_size` (the last one padded), so every
function compiles once. Clips from files are decoded like the training data: `data.num_frames` frames
at `data.image_size` px, spaced in time at the data set's frame rate, with the sound track.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.data import builders, clip_transform, features, pipeline, tokenizer, video_folder, video_io
from vlm_jax.errors import UserError
from vlm_jax.models import decoding
from vlm_jax.run.build import Run, load_run
from vlm_jax.train.state import TrainState


@dataclasses.dataclass
class Clip:
    """One video for the model: uint8 frames [T, H, W, 3], float waveform [S] in [-1, 1], and where it came
    from (`metadata`: source, split and position or path, captions and attributes when known)."""
    id: str
    video: np.ndarray
    audio: np.ndarray
    metadata: dict


class Predictor:
    """A run's model and parameters with jitted, batched entry points."""

    def __init__(self, run: Run, state: TrainState, step: int, workdir: str | Path):
        self.run, self.state, self.step, self.workdir = run, state, step, Path(workdir)
        self.batch_size = run.spec.batch_size
        self.variables = state.variables()
        model, caption = run.model, run.config.eval.caption
        # the variables are an argument, not a closure, so they are not baked into the programs as constants
        embed_videos = jax.jit(lambda v, video, audio: model.apply(v, video, audio, method=_embed_videos))
        embed_texts = jax.jit(lambda v, ids, mask: model.apply(v, ids, mask, method=_embed_texts))
        answer = jax.jit(lambda v, video, audio, ids, mask: model.apply(v, video, audio, ids, mask,
                                                                         method=_answer_probabilities))
        generate = jax.jit(lambda v, video, audio: decoding.generate_captions(
            model, v, video, audio, max_len=int(caption.max_len), beam_size=int(caption.beam_size),
            alpha=float(caption.alpha), min_len=int(caption.min_len)))
        self._embed_videos = lambda *args: embed_videos(self.variables, *args)
        self._embed_texts = lambda *args: embed_texts(self.variables, *args)
        self._answer = lambda *args: answer(self.variables, *args)
        self._caption = lambda *args: generate(self.variables, *args)

    @classmethod
    def load(cls, workdir: str | Path, step: int | None = None) -> "Predictor":
        run, state, step = load_run(workdir, step)
        return cls(run, state, step, workdir)

    def description(self) -> dict:
        """What produced this predictor's embeddings (stored in a search index)."""
        return {"encoder": "run", "workdir": str(self.workdir.absolute()), "step": self.step,
                "video": self.run.config.model.video.name, "text": self.run.config.model.text.name}

    @property
    def dim(self) -> int:
        return int(self.run.config.model.embed_dim)

    def clip_source(self, source: str | Sequence[str], limit: int = 0) -> "ClipSource":
        return clip_source(self.run, source, limit)

    def frames_of(self, metadata: dict) -> np.ndarray:
        """The frames of a clip this predictor's `clip_source` produced, as stored or decoded."""
        data = self.run.config.data
        if metadata.get("source") == "dataset":
            _, source = pipeline.open_split(self.run.spec, metadata["split"])
            return source[int(metadata["position"])]["video"]
        return video_io.decode_video(metadata["path"], int(data.num_frames), int(data.image_size)).frames

    # ------------------------------------------------------------------ batching

    def _batches(self, clips: Iterable[Clip]) -> Iterator[tuple[list[Clip], np.ndarray, np.ndarray]]:
        """(clips, video, audio) in full batches; the last one padded by repeating its first clip."""
        batch: list[Clip] = []
        for clip in clips:
            batch.append(clip)
            if len(batch) == self.batch_size:
                yield batch, *self._stack(batch)
                batch = []
        if batch:
            yield batch, *self._stack(batch + [batch[0]] * (self.batch_size - len(batch)))

    @staticmethod
    def _stack(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([c.video for c in clips]), np.stack([c.audio for c in clips])

    def _text_batches(self, texts: Sequence[str]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        max_len = int(self.run.config.data.max_text_len)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            ids, mask = tokenizer.encode(chunk + [""] * (self.batch_size - len(chunk)), max_len)
            yield len(chunk), ids, mask

    # ------------------------------------------------------------------ tasks

    def embed_videos(self, clips: Iterable[Clip],
                     on_batch: Callable[[int], None] | None = None) -> tuple[list[Clip], np.ndarray]:
        """(the clips, their unit-norm retrieval embeddings [N, E]); `on_batch(n)` reports progress."""
        done, parts = [], []
        for batch, video, audio in self._batches(clips):
            parts.append(np.asarray(self._embed_videos(video, audio))[:len(batch)])
            done.extend(batch)
            if on_batch:
                on_batch(len(batch))
        if not parts:
            raise UserError("no videos to embed")
        return done, np.concatenate(parts)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm retrieval embeddings [N, E] of the texts (truncated to `data.max_text_len` tokens)."""
        if not texts:
            raise UserError("no text to embed")
        parts = [np.asarray(self._embed_texts(ids, mask))[:count] for count, ids, mask in self._text_batches(texts)]
        return np.concatenate(parts)

    def captions(self, clips: Iterable[Clip]) -> list[tuple[Clip, str]]:
        out = []
        for batch, video, audio in self._batches(clips):
            tokens, _ = self._caption(video, audio)
            out.extend((clip, tokenizer.decode(row)) for clip, row in zip(batch, np.asarray(tokens)))
        return out

    def answers(self, clips: Iterable[Clip], question: str, top: int = 3) -> list[tuple[Clip, list[tuple[str, float]]]]:
        """The `top` most probable answers (from the data set's answer vocabulary) to one question per clip."""
        check_question(question)
        names = self.run.vocabulary.answers
        ids, mask = tokenizer.encode([question] * self.batch_size, int(self.run.config.data.max_question_len))
        out = []
        for batch, video, audio in self._batches(clips):
            probs = np.asarray(self._answer(video, audio, ids, mask))
            for clip, p in zip(batch, probs):
                best = np.argsort(-p, kind="stable")[:top]
                out.append((clip, [(names[i], float(p[i])) for i in best]))
        return out


def _embed_videos(vlm, video: jax.Array, audio: jax.Array) -> jax.Array:
    return vlm.embed_video(*vlm.encode_video(video, audio))


def _embed_texts(vlm, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return vlm.embed_text(vlm.encode_text(ids, mask))


def _answer_probabilities(vlm, video: jax.Array, audio: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
    encoded, sound = vlm.encode_video(video, audio)
    return jax.nn.softmax(vlm.answer(vlm.fuse(encoded, sound, vlm.encode_text(ids, mask))).astype(jnp.float32))


def check_question(question: str) -> None:
    if not question.strip():
        raise UserError("the question is empty")


# ---------------------------------------------------------------------- clip sources

class ClipSource:
    """Clips to run through the model, read lazily by `read(skipped)`: `count` expected, `skipped`
    (path, reason) filled in as unreadable ones are passed over."""

    def __init__(self, count: int, read: Callable[[list[tuple[str, str]]], Iterator[Clip]]):
        self.count = count
        self.skipped: list[tuple[str, str]] = []
        self.clips = read(self.skipped)


def decoded_files(files: Sequence[Path], decode: Callable[[Path], Clip]) -> ClipSource:
    """`files` decoded lazily by `decode`; a file it cannot decode is skipped and listed."""
    def read(skipped: list[tuple[str, str]]) -> Iterator[Clip]:
        for path in files:
            try:
                clip = decode(path)
            except video_io.VideoDecodeError as error:
                skipped.append((str(path), str(error)))
                continue
            yield clip
    return ClipSource(len(files), read)


def dataset_clips(run: Run, split: str, limit: int = 0, start: int = 0) -> ClipSource:
    """The clips of a split of the run's data set from position `start` up to `limit` (0: the end),
    prepared as for evaluation; metadata holds the captions and scene attributes."""
    dataset, split_source = pipeline.open_split(run.spec, split)
    records, transform = clip_transform.TolerantSource(split_source), clip_transform.for_dataset(run.spec, dataset)
    stop = len(records) if limit <= 0 else min(limit, len(records))

    def read(skipped: list[tuple[str, str]]) -> Iterator[Clip]:
        for position in range(start, stop):
            example = records[position]
            arrays = transform(example, None)
            if clip_transform.skipped(arrays):
                skipped.append((f"{split}:{position}", "an unreadable or malformed record"))
                continue
            metadata = {"source": "dataset", "split": split, "position": position,
                        "captions": features.texts(example["captions"])}
            metadata.update(clip_transform.attributes_of(example))
            yield Clip(features.text(example["id"]), arrays["video"], arrays["audio"], metadata)
    return ClipSource(max(0, stop - start), read)


def video_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files among `paths`, and every video in the folders among them; a missing path is a UserError."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(video_folder.list_videos(path).values())
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"no such video file or folder: {path}")
    if not files:
        raise UserError(f"no video files in {', '.join(map(str, paths))}")
    return files


def file_clips(run: Run, paths: Sequence[str | Path]) -> ClipSource:
    """Video files, and every video in the folders among `paths`, decoded like the run's data (frames
    spaced at the data set's frame rate, its sound track); unreadable files are skipped and listed."""
    files = video_files(paths)
    data = run.config.data
    meta = builders.open_dataset(run.spec.dataset_path).info.metadata or {}
    fps, sample_rate = meta.get("fps"), int(meta.get("sample_rate", features.SAMPLE_RATE))

    def decode(path: Path) -> Clip:
        decoded = video_io.decode_video(path, int(data.num_frames), int(data.image_size), fps=fps,
                                        sample_rate=sample_rate)
        audio, has_audio = video_folder.fixed_length_audio(decoded.audio, run.audio_samples)
        return Clip(path.stem, decoded.frames, audio.astype(np.float32) / 32768.0,
                    {"source": "file", "path": str(path.absolute()), "has_audio": has_audio})
    return decoded_files(files, decode)


def referenced_clips(run: Run, refs: Sequence[str]) -> ClipSource:
    """Clips named on a command line, in order: video files or folders, or `SPLIT:POSITION` of the run's
    data set (`test:0` is the first test clip). Bad references fail before any model work."""
    parts: list[ClipSource] = []
    for ref in refs:
        if Path(ref).exists():
            parts.append(file_clips(run, [ref]))
            continue
        split, _, position = ref.rpartition(":")
        if not split or not position.isdigit():
            raise UserError(f"{ref!r} is neither a video file or folder nor SPLIT:POSITION (e.g. test:0)")
        _, source = pipeline.open_split(run.spec, split)
        if int(position) >= len(source):
            raise UserError(f"{ref} is past the end of the {split} split ({len(source)} clips)")
        parts.append(dataset_clips(run, split, limit=int(position) + 1, start=int(position)))

    def read(skipped: list[tuple[str, str]]) -> Iterator[Clip]:
        for part in parts:
            yield from part.clips
            skipped.extend(part.skipped)
    return ClipSource(sum(p.count for p in parts), read)


def clip_source(run: Run, source: str | Sequence[str], limit: int = 0) -> ClipSource:
    """A split name of the run's data set (`test`), or video files and folders."""
    names = [source] if isinstance(source, str) else list(source)
    if len(names) == 1 and not Path(names[0]).exists():
        dataset = builders.open_dataset(run.spec.dataset_path)
        if names[0] in dataset.info.splits:
            return dataset_clips(run, names[0], limit)
        raise UserError(f"{names[0]!r} is neither a video file or folder nor a split of the run's data set "
                        f"({', '.join(dataset.info.splits)})")
    return file_clips(run, names)
