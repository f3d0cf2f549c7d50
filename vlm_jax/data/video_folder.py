"""video_folder: a TFDS builder over a folder of real videos and a captions file.

The video for id X is the file in the folder whose stem is X (.mp4 .avi .mkv .webm .mov).
Captions come from `captions.json` or `captions.csv` in the folder, or a given file, in one of
three formats:

* MSR-VTT style JSON: {"videos": [...], "sentences": [{"video_id": "video0", "caption": "..."}]}
  ("videos" is accepted and ignored; its split field is not used);
* a JSON list: [{"video_id": "...", "captions": ["..."],
  "qa": [{"question": "...", "answer": "...", "type": "open", "choices": ["..."]}]}]
  ("qa", "type" and "choices" are optional; type defaults to "open");
* CSV with the header video_id,caption, one row per caption.

Examples share the moving_shapes schema (`features.clip_features`), so one grain pipeline reads
both. Frames: `num_frames` uniformly spaced over the whole clip, short side resized and
centre-cropped (sample more frames here to sample randomly again at read time). Audio: the first
`max_audio_s` seconds (default 10) as 16 kHz int16, zero-padded to a fixed length; zeros and
has_audio False without a sound track. Splits: a stable hash of (seed, video id) puts each video
in train (80%), validation (10%) or test (10%); an empty split is left out. Hard negatives are
empty.

Bad input never stops a build: a video that cannot be decoded, a video without captions and a
caption id without a video are skipped with a warning, and counted with the captions that had
undecodable bytes in `info.metadata["skipped"]`. A prepared folder is not rebuilt when the
videos or captions change: delete its directory to rebuild.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import NoReturn

import numpy as np
import tensorflow_datasets as tfds

from vlm_jax.data import video_io
from vlm_jax.data.features import SAMPLE_RATE, BuildRequest, clip_features
from vlm_jax.errors import UserError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
CAPTION_FILES = ("captions.json", "captions.csv")
SPLIT_PERCENT = (("train", 80), ("validation", 10), ("test", 10))
SKIP_REASONS = ("corrupt_video", "no_captions", "missing_video", "non_utf8_captions")
MAX_AUDIO_S = 10.0

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Annotations:
    """Everything the captions file says about one video."""
    captions: list[str] = dataclasses.field(default_factory=list)
    questions: list[str] = dataclasses.field(default_factory=list)
    answers: list[str] = dataclasses.field(default_factory=list)
    question_types: list[str] = dataclasses.field(default_factory=list)
    choices: list[str] = dataclasses.field(default_factory=list)  # per question, the candidates joined by "|"


def assign_split(seed: int, video_id: str) -> str:
    """The split of a video: a stable hash, so adding videos never moves the others."""
    bucket = int.from_bytes(hashlib.sha1(f"{seed}:{video_id}".encode()).digest()[:8], "big") % 100
    for split, percent in SPLIT_PERCENT:
        if bucket < percent:
            return split
        bucket -= percent
    raise AssertionError("SPLIT_PERCENT must sum to 100")


def read_captions(path: Path) -> tuple[dict[str, Annotations], int]:
    """Annotations per video id, and how many captions held bytes that are not UTF-8 (decoded as U+FFFD)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserError(f"video_folder: cannot read captions file {path}: {error.strerror}") from None
    try:
        text, valid = raw.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        text, valid = raw.decode("utf-8-sig", errors="replace"), False
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"video_folder: {path} is not valid JSON: {error}") from None
        rows = _json_rows(path, data)
    elif path.suffix.lower() == ".csv":
        rows = _csv_rows(path, text)
    else:
        raise UserError(f"video_folder: captions file {path} must end in .json or .csv")
    annotations: dict[str, Annotations] = collections.defaultdict(Annotations)
    for video_id, captions, qa in rows:
        notes = annotations[video_id]
        notes.captions.extend(c.strip() for c in captions if c.strip())
        for question, answer, kind, choices in qa:
            notes.questions.append(question)
            notes.answers.append(answer)
            notes.question_types.append(kind)
            notes.choices.append("|".join(choices))
    non_utf8 = 0
    if not valid:
        non_utf8 = sum("\ufffd" in c for notes in annotations.values() for c in notes.captions)
        log.warning("video_folder: %s is not valid UTF-8; %d captions hold replaced bytes", path, non_utf8)
    return dict(annotations), non_utf8


def _fail(path: Path, where: str, problem: str) -> NoReturn:
    raise UserError(f"video_folder: malformed captions file {path}: {where} {problem}")


def _text(path: Path, where: str, value, allow_int: bool = False) -> str:
    if isinstance(value, str) or (allow_int and isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    _fail(path, where, f"should be a string, got {type(value).__name__}")


def _text_list(path: Path, where: str, value) -> list[str]:
    if not isinstance(value, list):
        _fail(path, where, f"should be a list of strings, got {type(value).__name__}")
    return [_text(path, f"{where}[{i}]", v) for i, v in enumerate(value)]


def _record(path: Path, where: str, value) -> dict:
    if not isinstance(value, dict):
        _fail(path, where, f"should be an object, got {type(value).__name__}")
    return value


def _json_rows(path: Path, data):
    """(video id, captions, [(question, answer, type, choices)]) per entry of either JSON format."""
    if isinstance(data, dict) and "sentences" in data:
        if not isinstance(data["sentences"], list):
            _fail(path, '"sentences"', "should be a list")
        for i, entry in enumerate(data["sentences"]):
            where = f"sentences[{i}]"
            entry = _record(path, where, entry)
            yield (_text(path, f"{where}.video_id", entry.get("video_id"), allow_int=True),
                   [_text(path, f"{where}.caption", entry.get("caption"))], [])
        return
    if not isinstance(data, list):
        _fail(path, "the top level", 'should be a list of videos or an object with "sentences"')
    for i, entry in enumerate(data):
        where = f"[{i}]"
        entry = _record(path, where, entry)
        video_id = _text(path, f"{where}.video_id", entry.get("video_id"), allow_int=True)
        captions = _text_list(path, f"{where}.captions", entry.get("captions", []))
        qa_list = entry.get("qa", [])
        if not isinstance(qa_list, list):
            _fail(path, f"{where}.qa", "should be a list")
        qa = []
        for j, item in enumerate(qa_list):
            at = f"{where}.qa[{j}]"
            item = _record(path, at, item)
            qa.append((_text(path, f"{at}.question", item.get("question")),
                       _text(path, f"{at}.answer", item.get("answer")),
                       _text(path, f"{at}.type", item.get("type", "open")),
                       _text_list(path, f"{at}.choices", item.get("choices", []))))
        yield video_id, captions, qa


def _csv_rows(path: Path, text: str):
    reader = csv.DictReader(io.StringIO(text))
    missing = {"video_id", "caption"} - set(reader.fieldnames or ())
    if missing:
        _fail(path, "the header", f"lacks {', '.join(sorted(missing))} (need video_id,caption)")
    rows = []
    for line, row in enumerate(reader, start=2):
        if row["video_id"] is None or row["caption"] is None:
            _fail(path, f"line {line}", "has too few columns")
        rows.append((row["video_id"].strip(), [row["caption"]], []))
    return rows


def find_captions(source: Path, captions: str | None) -> Path:
    """The given captions file, else captions.json or captions.csv in the source folder."""
    if captions:
        path = Path(captions).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"video_folder: captions file {path} not found")
        return path
    for name in CAPTION_FILES:
        if (source / name).is_file():
            return source / name
    raise UserError(f"video_folder: no captions file given and neither {' nor '.join(CAPTION_FILES)} in {source}")


def list_videos(source: Path) -> dict[str, Path]:
    """Video files by stem; hidden files (such as macOS ._ forks) are not videos."""
    videos: dict[str, Path] = {}
    for path in sorted(source.iterdir()):
        if path.suffix.lower() not in VIDEO_EXTENSIONS or path.name.startswith("."):
            continue
        if path.stem in videos:
            log.warning("video_folder: %s and %s share the id %r; using the first", videos[path.stem], path, path.stem)
            continue
        videos[path.stem] = path
    return videos


def fixed_length_audio(audio: np.ndarray | None, num_samples: int) -> tuple[np.ndarray, bool]:
    """The first `num_samples` as int16, zero-padded; (zeros, False) without sound."""
    out = np.zeros(num_samples, np.int16)
    if audio is None or not len(audio):
        return out, False
    head = np.clip(audio[:num_samples], -1.0, 1.0)
    out[:len(head)] = np.round(head * 32767).astype(np.int16)
    return out, True


class VideoFolderConfig(tfds.core.BuilderConfig):
    """One folder + captions file at one resolution, frame count and split seed.

    The name holds the folder name and a hash of the folder and captions paths (and the audio
    length), so two folders of the same name never share a prepared directory.
    """

    def __init__(self, *, source: Path, captions: Path, num_frames: int, image_size: int, seed: int,
                 max_audio_s: float = MAX_AUDIO_S):
        digest = hashlib.sha1(f"{source.resolve()}\n{captions.resolve()}\n{max_audio_s}".encode()).hexdigest()[:8]
        slug = re.sub(r"[^a-z0-9]+", "_", source.name.lower()).strip("_") or "videos"
        super().__init__(name=f"{slug}_{digest}_{image_size}px_{num_frames}f_seed{seed}",
                         description=f"videos in {source}, captions {captions}, {num_frames} frames at "
                                     f"{image_size}px, split seed {seed}")
        self.source, self.captions = source, captions
        self.num_frames, self.image_size, self.seed, self.max_audio_s = num_frames, image_size, seed, max_audio_s

    @property
    def num_samples(self) -> int:
        return int(round(self.max_audio_s * SAMPLE_RATE))


class VideoFolder(tfds.core.GeneratorBasedBuilder):
    """Real videos with captions (and optional QA) from a folder; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        metadata = tfds.core.MetadataDict(
            answers=[], question_types=[], sample_rate=SAMPLE_RATE, max_audio_s=cfg.max_audio_s,
            source=str(cfg.source), skipped=dict.fromkeys(SKIP_REASONS, 0))
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__,
            features=clip_features(cfg.num_frames, cfg.image_size, cfg.num_samples), metadata=metadata)

    def _download_and_prepare(self, dl_manager, download_config):
        """Keep decoded clips in a scratch folder inside the unfinished data directory while splits are written.

        Which splits are empty is only known once every video is decoded, and TFDS fails on an
        empty split, so decoding happens before writing; the scratch folder keeps memory flat.
        """
        with tempfile.TemporaryDirectory(prefix="decoded_", dir=self.data_dir) as scratch:
            self._scratch = Path(scratch)
            super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        annotations, non_utf8 = read_captions(cfg.captions)
        videos = list_videos(cfg.source)
        skipped = dict.fromkeys(SKIP_REASONS, 0)
        skipped["non_utf8_captions"] = non_utf8
        for video_id in sorted(annotations.keys() - videos.keys()):
            log.warning("video_folder: skipping %r: in %s but no video file in %s", video_id, cfg.captions, cfg.source)
            skipped["missing_video"] += 1
        by_split: dict[str, list[tuple[str, Path]]] = {split: [] for split, _ in SPLIT_PERCENT}
        for index, (video_id, path) in enumerate(videos.items()):
            if video_id not in annotations or not annotations[video_id].captions:
                log.warning("video_folder: skipping %s: no captions in %s", path, cfg.captions)
                skipped["no_captions"] += 1
                continue
            try:
                decoded = video_io.decode_video(path, cfg.num_frames, cfg.image_size,
                                                sample_rate=SAMPLE_RATE)
            except video_io.VideoDecodeError as error:
                log.warning("video_folder: skipping unreadable video: %s", error)
                skipped["corrupt_video"] += 1
                continue
            audio, has_audio = fixed_length_audio(decoded.audio, cfg.num_samples)
            spooled = self._scratch / f"{index:07d}.npz"
            np.savez(spooled, video=decoded.frames, audio=audio, has_audio=has_audio)
            by_split[assign_split(cfg.seed, video_id)].append((video_id, spooled))
        usable = [video_id for items in by_split.values() for video_id, _ in items]
        log.info("video_folder: %d usable videos in %s; skipped %s", len(usable), cfg.source, skipped)
        if not usable:
            raise UserError(f"video_folder: no usable videos in {cfg.source} (skipped: {skipped})")
        self.info.metadata.update(
            skipped=skipped,
            answers=sorted({a for video_id in usable for a in annotations[video_id].answers}),
            question_types=sorted({t for video_id in usable for t in annotations[video_id].question_types}))
        return {split: self._generate_examples(items, annotations) for split, items in by_split.items() if items}

    def _generate_examples(self, items: list[tuple[str, Path]], annotations: dict[str, Annotations]):
        for video_id, spooled in items:
            with np.load(spooled, allow_pickle=False) as decoded:
                notes = annotations[video_id]
                yield video_id, {
                    "id": video_id,
                    "video": decoded["video"],
                    "audio": decoded["audio"],
                    "has_audio": bool(decoded["has_audio"]),
                    "captions": notes.captions,
                    "hard_negatives": [],
                    "hard_negative_kinds": [],
                    "hard_negative_captions": np.zeros(0, np.int32),
                    "questions": notes.questions,
                    "answers": notes.answers,
                    "question_types": notes.question_types,
                    "choices": notes.choices,
                }


def builder(request: BuildRequest) -> VideoFolder:
    """The builder for `request.source` (a folder of videos) and its captions file."""
    if not request.source:
        raise UserError("video_folder needs a source: the folder that holds the videos")
    source = Path(request.source).expanduser().resolve()
    if not source.is_dir():
        raise UserError(f"video_folder: source {source} is not a folder")
    config = VideoFolderConfig(source=source, captions=find_captions(source, request.captions),
                               num_frames=request.num_frames, image_size=request.image_size, seed=request.seed)
    return VideoFolder(config=config, data_dir=request.data_dir, file_format="array_record")
