"""moving_shapes' renderer: a scene's pixels (and each object's box per frame) and its sound track."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from vlm_jax.data.moving_shapes_scene import COLOURS, MAX_OBJECTS, Scene, trajectory


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
