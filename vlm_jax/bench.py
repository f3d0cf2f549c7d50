"""`vlm bench`: throughput measured side by side in one process run.

Sections so far: the input pipeline. Results go to OUT/results.json (flat
"section/metric" -> number) and OUT/results.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

from vlm_jax import config as config_lib
from vlm_jax.data import builders, pipeline

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pretrain.py"


def input_pipeline(quick: bool, data_dir: str) -> dict[str, float]:
    """Clips per second that grain delivers with the default augmentations (full: the default-size data)."""
    preset = "tiny" if quick else "base"
    config = config_lib.load(f"{CONFIG}:{preset}", [f"data.data_dir={data_dir}"])
    builders.build(pipeline.build_request(config))
    results = {}
    for workers in (0, 2):
        spec = dataclasses.replace(pipeline.Spec.from_config(config), num_workers=workers)
        iterator = iter(pipeline.train_dataset(spec))
        next(iterator)  # warm-up: worker start, first reads
        rates = []
        for _ in range(3 if quick else 5):
            start, clips = time.perf_counter(), 0
            for _ in range(4 if quick else 20):
                clips += len(next(iterator)["video"])
            rates.append(clips / (time.perf_counter() - start))
        results[f"input/{preset}/clips_per_s_workers{workers}"] = statistics.median(rates)
    return results


def run(quick: bool, out_dir: str, data_dir: str | None = None) -> dict[str, float]:
    data_dir = data_dir or os.environ.get("VLM_DATA_DIR", "data")
    results = input_pipeline(quick, data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = "| metric | value |\n|---|---|\n" + "".join(f"| {k} | {v:.1f} |\n" for k, v in results.items())
    (out / "results.md").write_text(table)
    print(table)
    return results
