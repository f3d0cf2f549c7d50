"""`vlm data show`: statistics and pictures of a prepared data set, to check it by eye before training.

`show` writes stats.json (counts and label distributions per split),
samples.md (the text of the first clips), contact_sheet.png (frames of the
first clips with their first caption and ground-truth boxes), clips.gif (the
same clips playing) and audio.png (waveforms and spectrograms).
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from vlm_jax.data import builders, features
from vlm_jax.errors import UserError

MAX_SCANNED = 2000  # statistics read at most this many examples per split, so large splits stay quick
RAW_FIELDS = ("video", "audio", "boxes")  # statistics never look at these, so they are left as bytes
LABEL_FIELDS = {"object_shapes": "shapes", "object_colours": "colours", "object_sizes": "sizes",
                "object_motions": "motions"}  # moving_shapes only; other sources lack them
SHEET_FRAMES = 8
SHEET_FRAME_PX = 128  # frames are upscaled to at least this size so motion is visible
SHEET_CAPTION_LINES = 2
GIF_TILE_PX = 192
GIF_TILES_PER_ROW = 4
GIF_CAPTION_LINES = 4
AUDIO_CLIPS = 4
SPECTROGRAM_DB = (-100, -20)  # one colour scale for every clip, so silence looks dark rather than stretched
GAP = 2  # pixels between frames and tiles
BACKGROUND = (24, 24, 24)
TEXT_COLOUR = (235, 235, 235)
DIM_TEXT_COLOUR = (150, 150, 150)
BOX_COLOUR = (255, 255, 255)


def show(dataset_path: Path, out_dir: Path, num_clips: int = 8, split: str = "train") -> dict:
    """Write stats.json, samples.md, contact_sheet.png, clips.gif and audio.png; return the statistics."""
    builder = builders.open_dataset(dataset_path)
    if split not in builder.info.splits:
        raise UserError(f"no split {split!r} in {dataset_path}; choose one of {', '.join(builder.info.splits)}")
    if num_clips < 1:
        raise UserError(f"num_clips must be at least 1, got {num_clips}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    stats = dataset_stats(builder, dataset_path)
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")

    source = builder.as_data_source(split=split)
    clips = [source[i] for i in range(min(num_clips, len(source)))]
    if not clips:
        raise UserError(f"split {split!r} of {dataset_path} is empty")
    metadata = builder.info.metadata or {}
    (out_dir / "samples.md").write_text(samples_markdown(clips, f"{builder.info.name}, {split}"))
    contact_sheet(clips).save(out_dir / "contact_sheet.png")
    save_gif(clips, out_dir / "clips.gif", frame_ms=round(1000 / metadata.get("fps", 8.0)))
    with_audio = [clip for clip in clips if clip["has_audio"]][:AUDIO_CLIPS]
    if with_audio:
        audio_figure(with_audio, metadata.get("sample_rate", features.SAMPLE_RATE)).savefig(
            out_dir / "audio.png", dpi=100)
    return stats


# ----------------------------------------------------------------------------- statistics


def dataset_stats(builder: tfds.core.DatasetBuilder, dataset_path: Path) -> dict:
    """Shapes, rates and per-split distributions; JSON-ready (string keys only)."""
    info = builder.info
    metadata = info.metadata or {}
    num_samples = int(info.features["audio"].shape[0])
    sample_rate = metadata.get("sample_rate", features.SAMPLE_RATE)
    stats = {
        "dataset": str(dataset_path),
        "name": info.name,
        "config": builder.builder_config.name if builder.builder_config else None,
        "video_shape": list(info.features["video"].shape),
        "fps": metadata.get("fps"),
        "audio": {"num_samples": num_samples, "sample_rate": sample_rate,
                  "seconds": round(num_samples / sample_rate, 3)},
        "splits": {split: split_stats(builder, split) for split in info.splits},
    }
    if "skipped" in metadata:
        stats["skipped"] = metadata["skipped"]
    return stats


def split_stats(builder: tfds.core.DatasetBuilder, split: str) -> dict:
    """Distributions over the first MAX_SCANNED examples; `scanned` < `total` says when that is a sample."""
    stored = builder.info.features.keys()
    skip_pixels = {name: tfds.decode.SkipDecoding() for name in RAW_FIELDS if name in stored}
    source = builder.as_data_source(split=split, decoders=skip_pixels)
    total = len(source)
    scanned = min(total, MAX_SCANNED)
    labels = collections.defaultdict(collections.Counter)
    questions, negatives = collections.Counter(), collections.Counter()
    answers = collections.defaultdict(collections.Counter)
    captions_per_clip, caption_words, with_audio = [], [], 0
    for index in range(scanned):
        example = source[index]
        captions = features.texts(example["captions"])
        captions_per_clip.append(len(captions))
        caption_words.extend(len(caption.split()) for caption in captions)
        with_audio += bool(example["has_audio"])
        negatives.update(features.texts(example["hard_negative_kinds"]))
        for kind, answer in zip(features.texts(example["question_types"]), features.texts(example["answers"])):
            questions[kind] += 1
            answers[kind][answer] += 1
        for field, name in LABEL_FIELDS.items():
            if field in example:
                labels[name].update(features.texts(example[field]))
        if "object_shapes" in example:
            labels["num_objects"][str(len(example["object_shapes"]))] += 1
        if "sound" in example:
            labels["sounds"][features.text(example["sound"])] += 1
        if "sequential" in example:
            labels["timing"]["sequential" if example["sequential"] else "together"] += 1
    return {
        "total": total,
        "scanned": scanned,
        "clips_with_audio": with_audio,
        "captions_per_clip": _mean(captions_per_clip),
        "caption_words": {"mean": _mean(caption_words), "max": max(caption_words, default=0)},
        "hard_negatives": _sorted(negatives),
        "questions": _sorted(questions),
        "answers": {kind: _sorted(counts) for kind, counts in sorted(answers.items())},
        **{name: _sorted(counts) for name, counts in sorted(labels.items())},
    }


def _mean(values: list[int]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def _sorted(counts: collections.Counter) -> dict[str, int]:
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- samples.md


def samples_markdown(clips: list[dict], title: str) -> str:
    """Every caption, hard negative and QA pair of the clips, for reading alongside the pictures."""
    lines = [f"# {title}: first {len(clips)} clips", ""]
    for number, clip in enumerate(clips, 1):
        lines += [f"## {number}. {features.text(clip['id'])}", ""]
        if "object_shapes" in clip:
            objects = zip(*(features.texts(clip[f]) for f in ("object_sizes", "object_colours", "object_shapes",
                                                                  "object_motions")))
            described = "; ".join(f"{size} {colour} {shape} ({motion})" for size, colour, shape, motion in objects)
            timing = "sequential" if clip["sequential"] else "together"
            lines += [f"objects: {described}; {timing}; sound: {features.text(clip['sound'])}", ""]
        lines += ["captions:", ""] + [f"{k}. {c}" for k, c in enumerate(features.texts(clip["captions"]), 1)] + [""]
        negatives = list(zip(features.texts(clip["hard_negative_kinds"]), features.texts(clip["hard_negatives"])))
        if negatives:
            lines += ["hard negatives:", ""] + [f"- [{kind}] {text}" for kind, text in negatives] + [""]
        qa = list(zip(*(features.texts(clip[f]) for f in ("question_types", "questions", "answers", "choices"))))
        if qa:
            lines += ["| type | question | answer | choices |", "|---|---|---|---|"]
            lines += [f"| {_cell(kind)} | {_cell(question)} | {_cell(answer)} | {_cell(choices.replace('|', ', '))} |"
                      for kind, question, answer, choices in qa]
            lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# ----------------------------------------------------------------------------- pictures


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _line_height(font) -> int:
    return font.getbbox("Ag")[3] + 4


def _wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a cut last line ends in '...'."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and font.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while " " in last and font.getlength(last + " ...") > width:
            last = last.rsplit(" ", 1)[0]
        lines = lines[:max_lines - 1] + [last + " ..."]
    return lines


def upscale(frame: np.ndarray, min_px: int) -> Image.Image:
    """Nearest-neighbour upscale by the smallest integer factor that reaches `min_px`, so pixels stay crisp."""
    factor = max(1, math.ceil(min_px / min(frame.shape[:2])))
    height, width = frame.shape[:2]
    return Image.fromarray(frame).resize((width * factor, height * factor), Image.NEAREST)


def _draw_boxes(image: Image.Image, clip: dict, frame: int) -> None:
    """Thin outlines of the ground-truth boxes; rows past the object count are padding."""
    if "boxes" not in clip or "object_shapes" not in clip:
        return
    draw = ImageDraw.Draw(image)
    for ymin, xmin, ymax, xmax in clip["boxes"][frame, :len(clip["object_shapes"])]:
        box = (xmin * image.width, ymin * image.height, xmax * image.width - 1, ymax * image.height - 1)
        draw.rectangle(box, outline=BOX_COLOUR, width=1)


def contact_sheet(clips: list[dict]) -> Image.Image:
    """One row per clip: evenly spaced frames with boxes, then the clip id and first caption."""
    num_frames = clips[0]["video"].shape[0]
    frame_ids = np.linspace(0, num_frames - 1, min(SHEET_FRAMES, num_frames)).round().astype(int)
    tile = upscale(clips[0]["video"][0], SHEET_FRAME_PX)
    font, small = _font(16), _font(13)
    header, line = _line_height(small) + GAP, _line_height(font)
    row = tile.height + SHEET_CAPTION_LINES * line + 2 * GAP + 4
    width = len(frame_ids) * (tile.width + GAP) - GAP
    sheet = Image.new("RGB", (width, header + len(clips) * row), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for column, frame in enumerate(frame_ids):
        draw.text((column * (tile.width + GAP) + 4, 1), f"frame {frame}", fill=DIM_TEXT_COLOUR, font=small)
    for number, clip in enumerate(clips):
        top = header + number * row
        for column, frame in enumerate(frame_ids):
            image = upscale(clip["video"][frame], SHEET_FRAME_PX)
            _draw_boxes(image, clip, frame)
            sheet.paste(image, (column * (tile.width + GAP), top))
        caption = f"{features.text(clip['id'])}:  {_first_caption(clip)}"
        for k, text in enumerate(_wrap(caption, font, width - 8, SHEET_CAPTION_LINES)):
            draw.text((4, top + tile.height + GAP + k * line), text, fill=TEXT_COLOUR, font=font)
    return sheet


def _first_caption(clip: dict) -> str:
    return features.text(clip["captions"][0]) if len(clip["captions"]) else "(no caption)"


def save_gif(clips: list[dict], path: Path, frame_ms: int) -> None:
    """The clips playing side by side in a looping grid, each with its first caption under it."""
    tile = upscale(clips[0]["video"][0], GIF_TILE_PX)
    font = _font(13)
    line = _line_height(font)
    captions = [_wrap(_first_caption(clip), font, tile.width - 6, GIF_CAPTION_LINES) for clip in clips]
    columns = min(GIF_TILES_PER_ROW, len(clips))
    cell_w, cell_h = tile.width + GAP, tile.height + GIF_CAPTION_LINES * line + 3 * GAP
    size = (columns * cell_w - GAP, math.ceil(len(clips) / columns) * cell_h)
    background = Image.new("RGB", size, BACKGROUND)  # captions are the same in every frame: draw them once
    draw = ImageDraw.Draw(background)
    for number, lines in enumerate(captions):
        left, top = (number % columns) * cell_w, (number // columns) * cell_h + tile.height + GAP
        for k, text in enumerate(lines):
            draw.text((left + 3, top + k * line), text, fill=TEXT_COLOUR, font=font)
    frames = []
    for frame in range(clips[0]["video"].shape[0]):
        image = background.copy()
        for number, clip in enumerate(clips):
            corner = ((number % columns) * cell_w, (number // columns) * cell_h)
            image.paste(upscale(clip["video"][frame], GIF_TILE_PX), corner)
        frames.append(image)
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0, duration=frame_ms, disposal=1)


def audio_figure(clips: list[dict], sample_rate: int) -> Figure:
    """Waveform and spectrogram per clip, titled with its sound label so a mismatch stands out."""
    figure = Figure(figsize=(12, 2.6 * len(clips)), layout="constrained")
    axes = figure.subplots(len(clips), 2, squeeze=False)
    for (wave_axis, spec_axis), clip in zip(axes, clips):
        wave = clip["audio"].astype(np.float32) / 32768.0
        label = features.text(clip["sound"]) if "sound" in clip else "audio"
        title = f"{features.text(clip['id'])}: {label}"
        wave_axis.plot(np.arange(len(wave)) / sample_rate, wave, linewidth=0.5)
        seconds = len(wave) / sample_rate
        wave_axis.set(title=title, xlabel="seconds", ylabel="amplitude", ylim=(-1, 1), xlim=(0, seconds))
        spec_axis.specgram(wave, NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma",
                           vmin=SPECTROGRAM_DB[0], vmax=SPECTROGRAM_DB[1])
        spec_axis.set(title=title, xlabel="seconds", ylabel="Hz", xlim=(0, seconds))
    return figure
