"""moving_shapes' language: captions, hard-negative captions and typed questions, all read from the scene."""

from __future__ import annotations

import dataclasses

import numpy as np

from vlm_jax.data.moving_shapes_scene import (COLOUR_NAMES, MOTIONS, OPPOSITE_MOTION, SHAPES, SOUNDS, ObjectSpec,
                                              Scene)

COUNT_WORDS = ("zero", "one", "two", "three")
QA_TYPES = ("colour", "shape", "count", "direction", "order", "sound", "yesno")
ANSWERS = COLOUR_NAMES + SHAPES + COUNT_WORDS + MOTIONS + SOUNDS + ("yes", "no")
CAPTION_STYLES = ("motion", "count", "sound", "size")  # what each of a clip's captions (in this order) is about
NUM_CAPTIONS = len(CAPTION_STYLES)
NUM_CHOICES = 4

# Parallel synonym lists: index k of a motion and of its opposite read alike, so
# a direction hard negative differs from the true caption in the direction only.
MOTION_PHRASES = {
    "left": ("moves left", "slides to the left", "moves leftward", "travels to the left"),
    "right": ("moves right", "slides to the right", "moves rightward", "travels to the right"),
    "up": ("moves up", "slides upward", "rises", "travels up"),
    "down": ("moves down", "slides downward", "falls", "travels down"),
    "still": ("stays still", "does not move", "remains in place", "stays where it is"),
    "grow": ("grows", "gets bigger", "expands", "grows larger"),
    "shrink": ("shrinks", "gets smaller", "contracts", "shrinks down"),
}
SHAPE_WORDS = {
    "circle": ("circle", "disc", "circle", "ball"),
    "square": ("square", "box", "square", "square"),
    "triangle": ("triangle",) * 4,
    "star": ("star",) * 4,
    "cross": ("cross", "plus sign", "cross", "cross"),
}
SIZE_WORDS = {"small": ("small", "little", "small", "tiny"), "large": ("large", "big", "large", "big")}
SOUND_PHRASES = {
    "silence": ("in complete silence", "with no sound at all", "silently", "without any sound"),
    "high beep": ("while a high beep sounds", "as a high-pitched tone plays", "with a high beep",
                  "while a shrill beep is heard"),
    "low beep": ("while a low beep sounds", "as a deep tone plays", "with a low beep", "while a low hum is heard"),
    "clicks": ("while clicks are heard", "as a series of clicks plays", "with clicking sounds",
               "while something clicks"),
}
SEQUENCE_TEMPLATES = (
    "first the {a} {ma}, then the {b} {mb}",
    "the {a} {ma} before the {b} {mb}",
    "the {b} {mb} after the {a} {ma}",
    "the {a} {ma}, and afterwards the {b} {mb}",
)


def _name(obj: ObjectSpec, k: int, with_size: bool = False) -> str:
    """The object as words ("small red disc") in synonym style k."""
    words = [SIZE_WORDS[obj.size][k]] if with_size else []
    return " ".join(words + [obj.colour, SHAPE_WORDS[obj.shape][k]])


def _clause(obj: ObjectSpec, k: int, with_size: bool = False) -> str:
    return f"{_name(obj, k, with_size)} {MOTION_PHRASES[obj.motion][k]}"


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _motion_sentence(scene: Scene, k: int, with_size: bool = False) -> str:
    """All objects and what they do; sequential scenes say which moves first."""
    if scene.sequential:
        a, b = scene.objects[0], scene.objects[1]
        sentence = SEQUENCE_TEMPLATES[k].format(
            a=_name(a, k, with_size), ma=MOTION_PHRASES[a.motion][k], b=_name(b, k, with_size),
            mb=MOTION_PHRASES[b.motion][k])
        rest = [_clause(o, k, with_size) for o in scene.objects[2:]]
        return sentence + (f", while the {_join(rest)}" if rest else "")
    return _join([_with_article(_clause(o, k, with_size)) for o in scene.objects])


def captions_for(scene: Scene, styles: tuple[int, int, int, int]) -> list[str]:
    """The true captions, one per `CAPTION_STYLES` in its order, in the given synonym styles."""
    count = len(scene.objects)
    noun = "shape" if count == 1 else "shapes"
    return [
        _motion_sentence(scene, styles[0]),
        f"{'one' if count == 1 else COUNT_WORDS[count]} {noun}: {_motion_sentence(scene, styles[1])}",
        f"{_motion_sentence(scene, styles[2])} {SOUND_PHRASES[scene.sound][styles[2]]}",
        _motion_sentence(scene, styles[3], with_size=True),
    ]


def hard_negatives_for(scene: Scene, rng: np.random.Generator,
                       styles: tuple[int, int, int, int]) -> list[tuple[str, str, int]]:
    """(caption, kind, index of the true caption it negates): each true caption's twins that differ from it
    in one thing only, worded in the same style, so that wording alone never tells a negative from a
    positive. Kinds: "direction" (one moving object does the opposite), "order" (the sequential pair
    swapped), "sound" (another sound, for the caption that names it), "shape" and "colour" (one object
    drawn as another shape, or in another colour). Without the last two no negative differs in what an
    object looks like, and no loss needs the encoder to tell shapes apart (docs/research.md)."""
    def replaced(i: int, **change) -> Scene:
        changed = dataclasses.replace(scene.objects[i], **change)
        return dataclasses.replace(scene, objects=scene.objects[:i] + (changed,) + scene.objects[i + 1:])

    variants = []
    movers = [i for i, o in enumerate(scene.objects) if o.motion != "still"]
    if movers:
        i = int(rng.choice(movers))
        variants.append(("direction", replaced(i, motion=OPPOSITE_MOTION[scene.objects[i].motion])))
    if scene.sequential:
        swapped = (scene.objects[1], scene.objects[0]) + scene.objects[2:]
        variants.append(("order", dataclasses.replace(scene, objects=swapped)))
    other_sound = str(rng.choice([s for s in SOUNDS if s != scene.sound]))
    variants.append(("sound", dataclasses.replace(scene, sound=other_sound)))
    i = int(rng.integers(len(scene.objects)))
    variants.append(("shape", replaced(i, shape=str(rng.choice([s for s in SHAPES if s != scene.objects[i].shape])))))
    i = int(rng.integers(len(scene.objects)))
    variants.append(("colour", replaced(i, colour=str(rng.choice([c for c in COLOUR_NAMES
                                                                  if c != scene.objects[i].colour])))))
    true = captions_for(scene, styles)
    return [(negative, kind, index) for kind, variant in variants
            for index, negative in enumerate(captions_for(variant, styles)) if negative != true[index]]


def _choices(rng: np.random.Generator, answer: str, pool: tuple[str, ...]) -> list[str]:
    """The answer plus distractors from the same answer type, in random order."""
    others = [a for a in pool if a != answer]
    picked = [answer] + [str(a) for a in rng.choice(others, min(NUM_CHOICES - 1, len(others)), replace=False)]
    return [picked[i] for i in rng.permutation(len(picked))]


def questions_for(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str, list[str]]]:
    """(question, answer, type, choices), one per applicable QA type."""
    objs = scene.objects
    qa = []
    motions = [o.motion for o in objs]

    def pick() -> ObjectSpec:
        return objs[int(rng.integers(len(objs)))]

    o = pick()
    if motions.count(o.motion) == 1 and rng.random() < 0.5:
        q = f"what colour is the shape that {MOTION_PHRASES[o.motion][0]}?"
    else:
        q = f"what colour is the {o.shape}?"
    qa.append((q, o.colour, "colour", _choices(rng, o.colour, COLOUR_NAMES)))

    o = pick()
    if motions.count(o.motion) == 1 and rng.random() < 0.5:
        q = f"what shape {MOTION_PHRASES[o.motion][0]}?"
    else:
        q = f"what shape is the {o.colour} object?"
    qa.append((q, o.shape, "shape", _choices(rng, o.shape, SHAPES)))

    if rng.random() < 0.5:
        qa.append(("how many shapes are there?", COUNT_WORDS[len(objs)], "count",
                   _choices(rng, COUNT_WORDS[len(objs)], COUNT_WORDS[1:])))
    else:
        moving = COUNT_WORDS[len(scene.movers)]
        qa.append(("how many shapes move?", moving, "count", _choices(rng, moving, COUNT_WORDS)))

    o = pick()
    qa.append((f"what does the {o.colour} {o.shape} do?", o.motion, "direction", _choices(rng, o.motion, MOTIONS)))

    if scene.sequential:
        first, second = objs[0], objs[1]
        form = int(rng.integers(3))
        if form == 0:
            qa.append(("what colour is the shape that moves first?", first.colour, "order",
                       _choices(rng, first.colour, COLOUR_NAMES)))
        elif form == 1:
            qa.append(("what shape moves second?", second.shape, "order", _choices(rng, second.shape, SHAPES)))
        else:
            a, b = (first, second) if rng.random() < 0.5 else (second, first)
            answer = "yes" if a is first else "no"
            qa.append((f"does the {a.colour} {a.shape} move before the {b.colour} {b.shape}?", answer, "order",
                       ["yes", "no"]))

    qa.append(("what sound can be heard?", scene.sound, "sound", _choices(rng, scene.sound, SOUNDS)))

    if rng.random() < 0.5:
        o = pick()
        q, answer = f"is there {_with_article(f'{o.colour} {o.shape}')}?", "yes"
    else:
        present = {(o.colour, o.shape) for o in objs}
        absent = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present]
        colour, shape = absent[int(rng.integers(len(absent)))]
        q, answer = f"is there {_with_article(f'{colour} {shape}')}?", "no"
    qa.append((q, answer, "yesno", ["yes", "no"]))
    return qa
