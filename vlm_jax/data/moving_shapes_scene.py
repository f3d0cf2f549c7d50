"""moving_shapes' scenes: what a clip shows (shapes, colours, sizes, motions, a sound), drawn at random.

The renderer (`moving_shapes_render`) and the language (`moving_shapes_language`) both read a `Scene`,
so pixels, sound and text agree by construction.
"""

from __future__ import annotations

import dataclasses

import numpy as np

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
MAX_OBJECTS = 3

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
