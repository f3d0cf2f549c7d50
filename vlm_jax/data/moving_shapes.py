"""moving_shapes: procedural clips in which time, order and sound really matter.

Each clip shows one to three coloured shapes on a textured, noisy background.
Every shape translates, stays still, grows or shrinks; in "sequential" clips
one shape moves first and another moves after it. A sound track carries an
event that only the audio tells (silence, a high beep, a low beep, clicks).
Captions, hard-negative captions and typed QA pairs are generated from the
same scene description that renders the pixels, so they agree by
construction, and per-frame boxes allow scoring of attention maps.

`make_clip` draws a scene (`moving_shapes_scene`), renders it (`moving_shapes_render`)
and describes it (`moving_shapes_language`). All of it is pure numpy, so the build's
worker processes never import TFDS; `moving_shapes_tfds` wraps it as a TFDS builder.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vlm_jax.data.moving_shapes_language import (SEQUENCE_TEMPLATES, captions_for, hard_negatives_for,
                                                 questions_for)
from vlm_jax.data.moving_shapes_render import RenderSpec, render_audio, render_video
from vlm_jax.data.moving_shapes_scene import Scene, sample_scene

SPLITS = ("train", "validation", "test", "test_novel")  # a clip's seed holds its split's place here: never reorder


@dataclasses.dataclass
class Clip:
    """A rendered example: pixels, sound, ground truth and language."""
    scene: Scene
    video: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # (S,) int16
    boxes: np.ndarray  # (T, MAX_OBJECTS, 4) float32 (ymin, xmin, ymax, xmax) in [0, 1]; zeros pad
    captions: list[str]
    hard_negatives: list[str]
    hard_negative_kinds: list[str]
    hard_negative_captions: list[int]  # the index of the true caption each hard negative negates
    questions: list[str]
    answers: list[str]
    question_types: list[str]
    choices: list[list[str]]


def make_clip(seed: int, split: str, index: int, spec: RenderSpec) -> Clip:
    """The clip `index` of `split`: a pure function of its arguments, so builds are deterministic."""
    split_id = SPLITS.index(split)
    rng = np.random.default_rng([seed, split_id, index])
    scene = sample_scene(rng, spec.num_frames, spec.num_frames / spec.fps, novel=split == "test_novel",
                         max_objects=spec.max_objects, shape_scale=spec.shape_scale)
    video, boxes = render_video(scene, rng, spec)
    audio = render_audio(scene, rng, spec)
    styles = tuple(int(s) for s in rng.permutation(len(SEQUENCE_TEMPLATES)))
    captions = captions_for(scene, styles)
    negatives = hard_negatives_for(scene, rng, styles)
    qa = questions_for(scene, rng)
    return Clip(
        scene=scene, video=video, audio=audio, boxes=boxes, captions=captions,
        hard_negatives=[n for n, _, _ in negatives], hard_negative_kinds=[k for _, k, _ in negatives],
        hard_negative_captions=[c for _, _, c in negatives],
        questions=[q for q, _, _, _ in qa], answers=[a for _, a, _, _ in qa],
        question_types=[t for _, _, t, _ in qa], choices=[c for _, _, _, c in qa])


def make_example(seed: int, split: str, index: int, spec: RenderSpec) -> dict:
    """The clip as a flat dict of the TFDS features (see `moving_shapes_tfds.MovingShapes`)."""
    clip = make_clip(seed, split, index, spec)
    scene = clip.scene
    return {
        "id": f"{split}/{index:06d}",
        "video": clip.video,
        "audio": clip.audio,
        "has_audio": True,
        "captions": clip.captions,
        "hard_negatives": clip.hard_negatives,
        "hard_negative_kinds": clip.hard_negative_kinds,
        "hard_negative_captions": np.asarray(clip.hard_negative_captions, np.int32),
        "questions": clip.questions,
        "answers": clip.answers,
        "question_types": clip.question_types,
        "choices": ["|".join(c) for c in clip.choices],
        "boxes": clip.boxes,
        "object_shapes": [o.shape for o in scene.objects],
        "object_colours": [o.colour for o in scene.objects],
        "object_sizes": [o.size for o in scene.objects],
        "object_motions": [o.motion for o in scene.objects],
        "sequential": scene.sequential,
        "sound": scene.sound,
    }
