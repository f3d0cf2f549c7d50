"""The `input` section: clips per second from grain with the default augmentations, and from real mp4
decoding, to set against the train step's clips per second (the runner's `over_train`)."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vlm_jax.bench.presets import load_config
from vlm_jax.data import builders, features, pipeline, video_io

INPUT_PRESET = {True: "tiny", False: "small"}  # quick -> the preset the train section runs
MP4_FILES = 16


def input_pipeline(quick: bool, data_dir: str) -> dict[str, float]:
    """`input/<preset>/clips_per_s_workers<n>` for 0 and 2 grain workers, and `input/mp4/clips_per_s`."""
    preset = INPUT_PRESET[quick]
    config = load_config(preset, data_dir)
    builders.build(features.BuildRequest.from_config(config))
    results = {}
    for workers in (0, 2):
        spec = dataclasses.replace(pipeline.Spec.from_config(config), num_workers=workers)
        iterator = iter(pipeline.train_dataset(spec))
        next(iterator)  # warm-up: worker start, first reads
        rates = []
        for _ in range(3 if quick else 5):
            start, clips = time.perf_counter(), 0
            for _ in range(4 if quick else 10):
                clips += len(next(iterator)["video"])
            rates.append(clips / (time.perf_counter() - start))
        results[f"input/{preset}/clips_per_s_workers{workers}"] = statistics.median(rates)
    results.update(mp4_decoding(quick, config))
    return results


def mp4_decoding(quick: bool, config: Any) -> dict[str, float]:
    """`input/mp4/clips_per_s`: clips per second that `video_io.decode_video` cuts from real mp4 files (H.264
    and AAC, 4 s at 25 fps, 160 x 120 with mono sound) at the preset's frames and image size, in this
    thread: the work a `video_folder` data build does per file. Written here with `video_io.write_video`
    (a moving colour ramp, so the encoder has motion to code); the writing is not timed."""
    num_files, seconds, fps, sample_rate = (4 if quick else MP4_FILES), 4, 25, 16000
    y, x = np.mgrid[0:120, 0:160]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="vlm_bench_mp4_") as folder:
        paths = [Path(folder) / f"clip{i}.mp4" for i in range(num_files)]
        for i, path in enumerate(paths):
            frames = np.stack([np.stack([(x + 3 * t + i) % 256, (y + 2 * t) % 256, (x + y + t) % 256], -1)
                               for t in range(seconds * fps)]).astype(np.uint8)
            sound = rng.uniform(-0.1, 0.1, seconds * sample_rate).astype(np.float32)
            video_io.write_video(path, frames, fps, audio=sound, sample_rate=sample_rate)
        rates = []
        for _ in range(1 + (2 if quick else 3)):  # the first round is the warm-up
            start = time.perf_counter()
            for path in paths:
                video_io.decode_video(path, int(config.data.num_frames), int(config.data.image_size))
            rates.append(num_files / (time.perf_counter() - start))
    return {"input/mp4/clips_per_s": statistics.median(rates[1:])}
