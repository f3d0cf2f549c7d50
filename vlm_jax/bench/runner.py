"""`vlm bench`'s runner: the chosen sections in `SECTIONS` order, the ratios between them, and the report
files (OUT/results.json: flat "section/metric" -> number; OUT/results.md: the same as a table)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Sequence

from vlm_jax.bench import compile_time, input_pipeline, memory, mfu, peak, peers, scaling, train
from vlm_jax.bench.common import SECTIONS, progress


def run(quick: bool, out_dir: str, data_dir: str | None = None, sections: Sequence[str] = SECTIONS,
        presets: Sequence[str] | None = None) -> dict[str, float]:
    """The chosen sections in `SECTIONS` order, then the derived ratios; writes results.json and results.md.
    train and mfu bring peak, which their MFU divides by. `presets` replaces the presets that the compile,
    train and mfu sections run at (each section's own choice by default)."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench sections {unknown}; choose from {', '.join(SECTIONS)}")
    if {"train", "mfu"} & set(sections):
        sections = {*sections, "peak"}
    data_dir = data_dir or os.environ.get("VLM_DATA_DIR", "data")
    results: dict[str, float] = {}
    peaks = lambda: {k: v for k, v in results.items() if k.startswith("peak/")}
    runners = {"peak": lambda: peak.matmul_peak(quick),
               "input": lambda: input_pipeline.input_pipeline(quick, data_dir),
               "compile": lambda: compile_time.compile_times(quick, data_dir, presets),
               "train": lambda: train.train(quick, data_dir, peaks(), presets),
               "mfu": lambda: mfu.mfu(quick, peaks(), presets),
               "scaling": lambda: scaling.scaling(quick), "memory": lambda: memory.memory(quick, data_dir),
               "peers": lambda: peers.peers(quick)}
    for name in SECTIONS:
        if name in sections:
            start = time.perf_counter()
            results.update(runners[name]())
            progress(f"{name} section done in {time.perf_counter() - start:.0f} s")
    results.update(derived(quick, results))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (out / "results.md").write_text(table)
    print(table)
    return results


def derived(quick: bool, results: dict[str, float]) -> dict[str, float]:
    """Ratios between sections, where both sides ran: `input/<preset>/over_train` = the faster grain setting's
    clips/s / the train step's clips/s at the same preset (the pipeline keeps up when above 1)."""
    preset = input_pipeline.INPUT_PRESET[quick]
    rates = [v for k, v in results.items() if k.startswith(f"input/{preset}/clips_per_s_workers")]
    consumed = results.get(f"train/{preset}/clips_per_s")
    return {f"input/{preset}/over_train": max(rates) / consumed} if rates and consumed else {}


def format_value(value: float) -> str:
    """At least 3 significant digits below 100, whole numbers above."""
    magnitude = abs(value)
    if not math.isfinite(value):
        return str(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(results: dict[str, float]) -> str:
    return "| metric | value |\n|---|---:|\n" + "".join(f"| {k} | {format_value(v)} |\n" for k, v in results.items())
