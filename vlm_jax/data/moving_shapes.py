"""moving_shapes: procedural clips in which time, order and sound really matter.

Each clip shows one to three coloured shapes on a textured, noisy background.
Every shape translates, stays still, grows or shrinks; in "sequential" clips
one shape moves first and another moves after it. A sound track carries an
event that only the audio tells (silence, a high beep, a low beep, clicks).
Captions, hard-negative captions and typed QA pairs are generated from the
same scene description that renders the pixels, so they agree by
construction, and per-frame boxes allow scoring of attention maps.

This module is pure numpy. The TFDS builder in `builders.py` wraps it.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (215, 35, 35),
    "green": (40, 175, 55),
    "blue": (45, 85, 235),
    "yellow": (240, 220, 35),
    "purple": (150, 50, 195),
    "cyan": (35, 215, 225),
    "orange": (250, 135, 25),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
TRANSLATIONS = ("left", "right", "up", "down")
MOTIONS = TRANSLATIONS + ("still", "grow", "shrink")
MOVING = tuple(m for m in MOTIONS if m != "still")
OPPOSITE_MOTION = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow"}
SOUNDS = ("silence", "high beep", "low beep", "clicks")
COUNT_WORDS = ("zero", "one", "two", "three")
QA_TYPES = ("colour", "shape", "count", "direction", "order", "sound", "yesno")
ANSWERS = COLOUR_NAMES + SHAPES + COUNT_WORDS + MOTIONS + SOUNDS + ("yes", "no")
MAX_OBJECTS = 3
CAPTION_STYLES = ("motion", "count", "sound", "size")  # what each of a clip's captions (in this order) is about
NUM_CAPTIONS = len(CAPTION_STYLES)
NUM_CHOICES = 4

# Attribute-motion pairs that never occur in train/validation/test. Every
# test_novel clip holds at least one of them (compositional generalisation).
NOVEL_COMBOS = frozenset({
    ("red", "left"), ("green", "up"), ("blue", "right"), ("yellow", "down"),
    ("purple", "grow"), ("cyan", "shrink"), ("orange", "still"),
    ("circle", "down"), ("triangle", "left"), ("star", "up"), ("square", "shrink"), ("cross", "right"),
})

SIZE_RADIUS = {"small": 0.085, "large": 0.135}  # fraction of the frame side
TRAVEL = 0.42  # distance a translating shape covers, fraction of the frame side
SCALE_END = {"grow": 1.7, "shrink": 0.55, "still": 1.0}

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


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str
    motion: str
    window: tuple[int, int]  # frames [start, end) during which the motion happens
    start: tuple[float, float]  # centre (x, y) at the first frame, fraction of the frame side
    scale: float = 1.0  # radius multiplier of both sizes (RenderSpec.shape_scale)

    @property
    def radius(self) -> float:
        """The radius at the first frame, fraction of the frame side."""
        return SIZE_RADIUS[self.size] * self.scale

    def name(self, k: int = 0, with_size: bool = False) -> str:
        words = [SIZE_WORDS[self.size][k]] if with_size else []
        return " ".join(words + [self.colour, SHAPE_WORDS[self.shape][k]])


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[ObjectSpec, ...]
    sequential: bool  # objects[0] moves in the first half, objects[1] in the second
    sound: str
    sound_window: tuple[float, float]  # seconds

    @property
    def movers(self) -> tuple[ObjectSpec, ...]:
        return tuple(o for o in self.objects if o.motion != "still")

    def is_novel(self) -> bool:
        return any((o.colour, o.motion) in NOVEL_COMBOS or (o.shape, o.motion) in NOVEL_COMBOS
                   for o in self.objects)


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """How clips are drawn. `shape_scale` enlarges every shape (both sizes, so "small" and "large" stay
    true) for low resolutions, where a small shape would cover a few pixels; `max_objects` caps the
    objects per clip (1 gives the single-object clips of the sanity ladder)."""
    num_frames: int = 16
    image_size: int = 64
    fps: float = 8.0
    sample_rate: int = 16000
    shape_scale: float = 1.0
    max_objects: int = MAX_OBJECTS

    @property
    def num_samples(self) -> int:
        return int(round(self.num_frames / self.fps * self.sample_rate))


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


# ----------------------------------------------------------------------------- scene sampling


def _progress(window: tuple[int, int], num_frames: int) -> np.ndarray:
    """Fraction of the motion done at each frame: 0 before the window, 1 after it."""
    start, end = window
    t = np.arange(num_frames, dtype=np.float64)
    return np.clip((t - start) / max(end - start - 1, 1), 0.0, 1.0)


def trajectory(obj: ObjectSpec, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, centre y and radius per frame, all as fractions of the frame side."""
    p = _progress(obj.window, num_frames)
    dx = {"left": -TRAVEL, "right": TRAVEL}.get(obj.motion, 0.0)
    dy = {"up": -TRAVEL, "down": TRAVEL}.get(obj.motion, 0.0)
    scale = 1.0 + (SCALE_END.get(obj.motion, 1.0) - 1.0) * p
    return obj.start[0] + dx * p, obj.start[1] + dy * p, obj.radius * scale


def _place(rng: np.random.Generator, obj: ObjectSpec, num_frames: int) -> ObjectSpec:
    """Pick a start so that the whole trajectory stays inside the frame."""
    margin = obj.radius * max(SCALE_END.get(obj.motion, 1.0), 1.0) + 0.02
    lo = {"x": margin, "y": margin}
    hi = {"x": 1.0 - margin, "y": 1.0 - margin}
    if obj.motion == "left":
        lo["x"] += TRAVEL
    elif obj.motion == "right":
        hi["x"] -= TRAVEL
    elif obj.motion == "up":
        lo["y"] += TRAVEL
    elif obj.motion == "down":
        hi["y"] -= TRAVEL
    return dataclasses.replace(obj, start=(float(rng.uniform(lo["x"], hi["x"])), float(rng.uniform(lo["y"], hi["y"]))))


def _overlap(a: ObjectSpec, b: ObjectSpec, num_frames: int) -> bool:
    ax, ay, ar = trajectory(a, num_frames)
    bx, by, br = trajectory(b, num_frames)
    return bool(np.any(np.hypot(ax - bx, ay - by) < 0.9 * (ar + br)))


OBJECT_COUNT_WEIGHTS = (0.25, 0.4, 0.35)  # P(1, 2, 3 objects)


def sample_scene(rng: np.random.Generator, num_frames: int, duration_s: float, novel: bool,
                 max_objects: int = MAX_OBJECTS, shape_scale: float = 1.0) -> Scene:
    """Draw a scene; `novel` scenes hold a held-out attribute-motion pair, others never do. A draw whose
    objects cannot be placed without touching is drawn again, so no shape hides another."""
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be 1 to {MAX_OBJECTS}, got {max_objects}")
    weights = np.asarray(OBJECT_COUNT_WEIGHTS[:max_objects])
    while True:
        n = int(rng.choice(np.arange(1, max_objects + 1), p=weights / weights.sum()))
        shapes = rng.choice(SHAPES, n, replace=False)
        colours = rng.choice(COLOUR_NAMES, n, replace=False)
        sizes = rng.choice(SIZES, n)
        sequential = n >= 2 and rng.random() < 0.5
        if sequential:
            motions = [str(m) for m in rng.choice(MOVING, 2)] + ["still"] * (n - 2)
            windows = [(0, num_frames // 2), (num_frames // 2, num_frames)] + [(0, num_frames)] * (n - 2)
        else:
            motions = [str(m) for m in rng.choice(MOTIONS, n)]
            windows = [(0, num_frames)] * n
        objects = [ObjectSpec(str(s), str(c), str(z), m, w, (0.5, 0.5), shape_scale)
                   for s, c, z, m, w in zip(shapes, colours, sizes, motions, windows)]
        scene = Scene(tuple(objects), sequential, "silence", (0.0, 0.0))
        if scene.is_novel() != novel:
            continue
        placed = _place_without_overlap(rng, objects, num_frames)
        if placed is None:
            continue
        sound = str(rng.choice(SOUNDS))
        length = float(rng.uniform(0.35, 0.7)) * duration_s
        start = float(rng.uniform(0.0, duration_s - length))
        return Scene(tuple(placed), sequential, sound, (start, start + length))


def _place_without_overlap(rng, objects, num_frames, tries: int = 30) -> list[ObjectSpec] | None:
    """Each object placed so that no two trajectories touch, or None when `tries` draws per object fail."""
    placed: list[ObjectSpec] = []
    for obj in objects:
        for _ in range(tries):
            candidate = _place(rng, obj, num_frames)
            if not any(_overlap(candidate, other, num_frames) for other in placed):
                break
        else:
            return None
        placed.append(candidate)
    return placed


# ----------------------------------------------------------------------------- rendering


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the shape, in units of its radius (negative inside)."""
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85
    if shape == "triangle":  # equilateral, pointing up (image y grows downward)
        u, v = u / 1.15, (v - 0.15) / 1.15
        return np.maximum.reduce([v, -0.866 * u - 0.5 * v, 0.866 * u - 0.5 * v]) - 0.5
    if shape == "star":  # five points, inner radius 0.45
        angle = np.arctan2(v, u) + np.pi / 2
        sector = np.mod(angle, 2 * np.pi / 5) - np.pi / 5
        edge = 0.45 + 0.6 * np.clip(1.0 - np.abs(sector) / (np.pi / 5), 0.0, 1.0)
        return np.hypot(u, v) - edge * 1.05
    if shape == "cross":
        bar = 0.32
        return np.minimum(np.maximum(np.abs(u) - 0.95, np.abs(v) - bar), np.maximum(np.abs(u) - bar, np.abs(v) - 0.95))
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency coloured texture plus fixed fine grain, mostly grey so shapes stand out."""
    coarse = rng.uniform(70, 160, size=(6, 6, 1)) + rng.uniform(-18, 18, size=(6, 6, 3))
    coarse = np.clip(coarse, 0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    stripes = 10.0 * np.sin(np.linspace(0, rng.uniform(4, 14) * np.pi, size))[None, :, None]
    if rng.random() < 0.5:
        stripes = stripes.transpose(1, 0, 2)
    return smooth + stripes + rng.normal(0, 6, size=(size, size, 3)).astype(np.float32)


def render_video(scene: Scene, rng: np.random.Generator, spec: RenderSpec) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (T, H, W, 3) uint8 and per-object boxes (T, MAX_OBJECTS, 4)."""
    t, size = spec.num_frames, spec.image_size
    frames = np.broadcast_to(_background(rng, size), (t, size, size, 3)).copy()
    pixel = (np.arange(size, dtype=np.float32) + 0.5) / size
    xs, ys = pixel[None, None, :], pixel[None, :, None]
    boxes = np.zeros((t, MAX_OBJECTS, 4), np.float32)
    for k, obj in enumerate(scene.objects):
        cx, cy, radius = (a.astype(np.float32)[:, None, None] for a in trajectory(obj, t))
        u, v = np.broadcast_arrays((xs - cx) / radius, (ys - cy) / radius)
        sdf = _signed_distance(obj.shape, u, v)
        alpha = np.clip(0.5 - sdf * radius * size, 0.0, 1.0)[..., None]
        shade = np.asarray(COLOURS[obj.colour], np.float32) + rng.normal(0, 8, size=3).astype(np.float32)
        frames = frames * (1.0 - alpha) + shade * alpha
        r = radius[:, 0, 0]
        boxes[:, k] = np.stack([cy[:, 0, 0] - r, cx[:, 0, 0] - r, cy[:, 0, 0] + r, cx[:, 0, 0] + r], axis=-1)
    frames += 5.0 * rng.standard_normal(frames.shape, dtype=np.float32)
    return np.clip(frames, 0, 255).astype(np.uint8), np.clip(boxes, 0.0, 1.0)


def render_audio(scene: Scene, rng: np.random.Generator, spec: RenderSpec) -> np.ndarray:
    """A mono int16 track: a noise floor plus the scene's sound event."""
    n = spec.num_samples
    t = np.arange(n) / spec.sample_rate
    wave = rng.normal(0, 0.01, n)
    start, end = scene.sound_window
    inside = (t >= start) & (t < end)
    ramp = np.minimum(1.0, np.minimum(t - start, end - t).clip(0) / 0.01)  # 10 ms fades, no pops
    if scene.sound in ("high beep", "low beep"):
        freq = rng.uniform(1100, 1700) if scene.sound == "high beep" else rng.uniform(160, 300)
        wave += 0.5 * np.sin(2 * np.pi * freq * t) * ramp * inside
    elif scene.sound == "clicks":
        for onset in rng.uniform(start, max(end - 0.03, start + 1e-3), size=int(rng.integers(3, 7))):
            after = t - onset
            burst = (after >= 0) & (after < 0.03)
            wave += 0.8 * rng.uniform(-1, 1, n) * np.exp(-after.clip(0) / 0.004) * burst
    return (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)


# ----------------------------------------------------------------------------- language


def _clause(obj: ObjectSpec, k: int, with_size: bool = False) -> str:
    return f"{obj.name(k, with_size)} {MOTION_PHRASES[obj.motion][k]}"


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _motion_sentence(scene: Scene, k: int, with_size: bool = False) -> str:
    """All objects and what they do; sequential scenes say which moves first."""
    if scene.sequential:
        a, b = scene.objects[0], scene.objects[1]
        sentence = SEQUENCE_TEMPLATES[k].format(
            a=a.name(k, with_size), ma=MOTION_PHRASES[a.motion][k], b=b.name(k, with_size),
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


# ----------------------------------------------------------------------------- one example


def make_clip(seed: int, split: str, index: int, spec: RenderSpec) -> Clip:
    """The clip `index` of `split`: a pure function of its arguments, so builds are deterministic."""
    split_id = ("train", "validation", "test", "test_novel").index(split)
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
    """The clip as a flat dict of the TFDS features (see `builders.MovingShapes`)."""
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


@functools.cache
def caption_templates() -> dict[str, list[str]]:
    """Every template and synonym, for documentation (`vlm data show`)."""
    return {
        "sequence": list(SEQUENCE_TEMPLATES),
        "captions": ["{motion sentence}", "{count} shapes: {motion sentence}", "{motion sentence} {sound phrase}",
                     "{motion sentence with sizes}"],
        **{f"motion:{m}": list(dict.fromkeys(p)) for m, p in MOTION_PHRASES.items()},
        **{f"sound:{s}": list(p) for s, p in SOUND_PHRASES.items()},
    }
