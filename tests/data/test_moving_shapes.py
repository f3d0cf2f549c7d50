"""The generator: determinism, captions true to the pixels, hard negatives, QA, sound, novel split."""

import re

import numpy as np
import pytest

from vlm_jax.data import moving_shapes as ms
from vlm_jax.data.moving_shapes_language import (ANSWERS, COUNT_WORDS, MOTION_PHRASES, NUM_CAPTIONS, QA_TYPES,
                                                 SHAPE_WORDS, SIZE_WORDS, SOUND_PHRASES)
from vlm_jax.data.moving_shapes_render import RenderSpec
from vlm_jax.data.moving_shapes_scene import COLOURS, MAX_OBJECTS, SOUNDS, TRANSLATIONS

SPEC = RenderSpec()
CLIPS = [ms.make_clip(0, "train", i, SPEC) for i in range(60)]


def test_same_arguments_same_clip_and_different_index_differs():
    a, b = ms.make_clip(3, "test", 7, SPEC), ms.make_clip(3, "test", 7, SPEC)
    assert np.array_equal(a.video, b.video) and np.array_equal(a.audio, b.audio) and a.captions == b.captions
    c = ms.make_clip(3, "test", 8, SPEC)
    assert not np.array_equal(a.video, c.video)


def test_shapes_and_dtypes():
    clip = CLIPS[0]
    assert clip.video.shape == (16, 64, 64, 3) and clip.video.dtype == np.uint8
    assert clip.audio.shape == (SPEC.num_samples,) and clip.audio.dtype == np.int16
    assert clip.boxes.shape == (16, MAX_OBJECTS, 4)
    big = ms.make_clip(0, "train", 0, RenderSpec(num_frames=8, image_size=224))
    assert big.video.shape == (8, 224, 224, 3)


def _centroid_of_colour(video: np.ndarray, colour: str) -> np.ndarray:
    """Per-frame centre (x, y) in [0, 1] of the pixels close to `colour`; NaN where none."""
    distance = np.linalg.norm(video.astype(np.float32) - np.asarray(COLOURS[colour], np.float32), axis=-1)
    mask = distance < 45
    size = video.shape[1]
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    count = mask.sum(axis=(1, 2))
    with np.errstate(invalid="ignore"):
        return np.stack([(mask * xs).sum(axis=(1, 2)) / count, (mask * ys).sum(axis=(1, 2)) / count], -1) / size


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: "clip")
def test_caption_motion_matches_pixels_and_boxes(clip):
    """When the caption says an object moves left, its box and its pixels really move left."""
    for k, obj in enumerate(clip.scene.objects):
        assert any(f"{obj.colour} {SHAPE_WORDS[obj.shape][s]} {MOTION_PHRASES[obj.motion][s]}"
                   in clip.captions[0] for s in range(4)), (obj, clip.captions[0])
        box = clip.boxes[:, k]
        centre_x, centre_y = (box[:, 1] + box[:, 3]) / 2, (box[:, 0] + box[:, 2]) / 2
        width = box[:, 3] - box[:, 1]
        dx, dy, grow = centre_x[-1] - centre_x[0], centre_y[-1] - centre_y[0], width[-1] / width[0]
        expected = {"left": dx < -0.3, "right": dx > 0.3, "up": dy < -0.3, "down": dy > 0.3,
                    "still": abs(dx) < 1e-6 and abs(dy) < 1e-6 and abs(grow - 1) < 1e-6,
                    "grow": grow > 1.5, "shrink": grow < 0.6}
        assert expected[obj.motion], (obj, dx, dy, grow)
        pixels = _centroid_of_colour(clip.video, obj.colour)
        if obj.motion in TRANSLATIONS and not np.isnan(pixels).any():
            axis, sign = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}[obj.motion]
            assert sign * (pixels[-1, axis] - pixels[0, axis]) > 0.25, (obj, pixels[[0, -1]])


def test_sequential_clips_move_one_object_per_half():
    sequential = [c for c in CLIPS if c.scene.sequential]
    assert len(sequential) >= 5
    half = SPEC.num_frames // 2
    for clip in sequential:
        first, second = clip.boxes[:, 0], clip.boxes[:, 1]
        assert not np.allclose(first[0], first[half - 1]) and np.allclose(first[half:], first[half])
        assert np.allclose(second[:half], second[0]) and not np.allclose(second[half], second[-1])
        assert "order" in clip.hard_negative_kinds


def test_hard_negatives_differ_from_their_own_caption_only_in_what_their_kind_names():
    motion_words = {w for phrases in MOTION_PHRASES.values() for p in phrases for w in p.split()}
    shape_words = {w for words in SHAPE_WORDS.values() for p in words for w in p.split()}
    checked = {"direction": 0, "order": 0, "sound": 0, "shape": 0, "colour": 0}
    for clip in CLIPS:
        for negative, kind, index in zip(clip.hard_negatives, clip.hard_negative_kinds, clip.hard_negative_captions):
            assert negative not in clip.captions
            true, neg = re.findall(r"[\w-]+", clip.captions[index]), re.findall(r"[\w-]+", negative)
            if kind == "direction" and len(true) == len(neg):
                changed = {w for a, b in zip(true, neg) if a != b for w in (a, b)}
                assert changed and changed <= motion_words, (clip.captions[index], negative)
            if kind == "order":
                assert sorted(true) == sorted(neg)  # the same words, reordered
            if kind == "sound":  # the same sentence ending in another sound's phrase
                true_phrase = next(p for p in SOUND_PHRASES[clip.scene.sound] if clip.captions[index].endswith(p))
                other = [p for s in SOUNDS if s != clip.scene.sound for p in SOUND_PHRASES[s]
                         if negative.endswith(p)]
                assert index == 2 and other
                assert negative.removesuffix(other[0]) == clip.captions[index].removesuffix(true_phrase)
            if kind in ("shape", "colour"):  # one object's shape or colour word (and its article) changed
                names = shape_words if kind == "shape" else set(COLOURS)
                true, neg = ([w for w in words if w not in ("a", "an")] for words in (true, neg))
                changed = [(a, b) for a, b in zip(true, neg) if a != b]
                if len(true) == len(neg):  # "plus sign" is two words
                    assert len(changed) == 1 and set(changed[0]) <= names, (clip.captions[index], negative)
                else:
                    assert kind == "shape" and set(true) ^ set(neg) <= shape_words, (clip.captions[index], negative)
            checked[kind] += 1
    assert min(checked.values()) > 10, checked


def _wording(text: str) -> str:
    """The caption with every word that names what the clip shows replaced (and "an" read as "a", which
    follows the next word): what is left is its style."""
    named = sorted({p for phrases in (*MOTION_PHRASES.values(), *SOUND_PHRASES.values(),
                                      *SHAPE_WORDS.values(), *SIZE_WORDS.values()) for p in phrases}
                   | set(COLOURS), key=len, reverse=True)
    return re.sub(r"\ban\b", "a", re.sub("|".join(rf"\b{re.escape(p)}\b" for p in named), "_", text))


def test_every_caption_style_has_hard_negatives_worded_like_it():
    """A negative is worded like the caption it negates, so wording alone cannot tell negatives from
    positives (a motion-sentence-only negative made every count, sound or size caption a sure positive)."""
    for clip in CLIPS:
        negated = set(clip.hard_negative_captions)
        if any(o.motion != "still" for o in clip.scene.objects):
            assert negated == set(range(NUM_CAPTIONS)), clip.captions
        for negative, index in zip(clip.hard_negatives, clip.hard_negative_captions):
            if not negative.endswith(tuple(p for s in SOUNDS for p in SOUND_PHRASES[s])):
                assert _wording(negative) == _wording(clip.captions[index]), (negative, clip.captions[index])


def test_questions_are_answerable_from_the_scene():
    types_seen = set()
    for clip in CLIPS:
        scene = clip.scene
        assert len(clip.captions) == NUM_CAPTIONS and len(set(clip.captions)) == NUM_CAPTIONS
        for q, a, t, choices in zip(clip.questions, clip.answers, clip.question_types, clip.choices):
            types_seen.add(t)
            assert a in ANSWERS and a in choices and t in QA_TYPES and len(set(choices)) == len(choices)
            if t == "sound":
                assert a == scene.sound
            if t == "direction":
                colour, shape = q.removeprefix("what does the ").removesuffix(" do?").split()
                assert a == next(o.motion for o in scene.objects if o.colour == colour and o.shape == shape)
            if q == "how many shapes are there?":
                assert a == COUNT_WORDS[len(scene.objects)]
            if q == "what colour is the shape that moves first?":
                assert a == scene.objects[0].colour
    assert types_seen == set(QA_TYPES)


def _band_energy(audio: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float32) / 32768)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SPEC.sample_rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum())


def test_sound_is_what_the_scene_says():
    by_sound = {}
    for clip in CLIPS:
        by_sound.setdefault(clip.scene.sound, []).append(clip.audio)
    assert set(by_sound) == set(SOUNDS)
    for audio in by_sound["high beep"]:
        assert _band_energy(audio, 1000, 1800) > 0.8
    for audio in by_sound["low beep"]:
        assert _band_energy(audio, 100, 350) > 0.8
    rms = {s: np.mean([np.sqrt(np.mean((a / 32768.0) ** 2)) for a in clips]) for s, clips in by_sound.items()}
    assert rms["silence"] < 0.02 < min(rms["high beep"], rms["low beep"], rms["clicks"])
    for audio in by_sound["clicks"]:  # impulsive: a high peak over a quiet floor
        x = np.abs(audio / 32768.0)
        assert x.max() > 10 * np.median(x)
