"""A run's files as the report reads them: config.json, metrics.jsonl (later lines winning, as after a
resume) and results.json, and the patterns of the results keys it groups (per answer, per question kind,
per caption style)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from vlm_jax.data import moving_shapes_language
from vlm_jax.errors import UserError

RANK_METRICS = ("MdR", "MnR")  # metric names ending so are ranks (lower is better), plotted apart from percentages
# results.json keys of per-answer QA precision / recall / F1 (shown only on request: there is one per answer)
PER_ANSWER_METRIC = re.compile(r"/qa/(precision|recall|f1)_(?!macro)")
# per-question-kind breakdowns (`qa/f1_macro_direction`): in the tables, not in the validation figure; their
# accuracies (`<split>/qa/acc_direction`) have a figure and a results table of their own
PER_KIND_METRIC = re.compile(rf"/qa/\w+_({'|'.join(moving_shapes_language.QA_TYPES)})$")
PER_KIND_ACCURACY = re.compile(rf"^([^/]+)/qa/acc_({'|'.join(moving_shapes_language.QA_TYPES)})$")  # (split, kind)
PER_STYLE_RECALL = re.compile(r"/retrieval/t2v_R@1_(\w+)$")  # text-to-video R@1 of one caption style (motion, ...)
PER_STYLE_METRIC = re.compile(r"/retrieval/t2v_R@\d+_\w+$")  # every per-style recall: kept out of the main figure


@dataclasses.dataclass
class RunFiles:
    """What a run wrote: its resolved config, its metrics by step and its final results (empty when the
    run has not finished)."""
    config: dict[str, Any]
    metrics: dict[int, dict[str, float]]
    results: dict[str, Any]


def read_run(workdir: Path) -> RunFiles:
    """config.json, metrics.jsonl (later lines winning, as after a resume) and results.json."""
    config_path, metrics_path, results_path = (workdir / name for name in ("config.json", "metrics.jsonl",
                                                                           "results.json"))
    if not config_path.is_file():
        raise UserError(f"{workdir} is not a run directory (no config.json)")
    records = metric_records(metrics_path)
    if not records:
        raise UserError(f"{workdir} has no metrics yet (no lines in {metrics_path.name}); train the run first")
    results = read_json(results_path) if results_path.is_file() else {}
    return RunFiles(read_json(config_path), by_step(records), results)


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def metric_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of metrics.jsonl; a line cut short by a crash is passed over."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def by_step(records: Iterable[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """step -> {key: value} merged over the step's lines; None (a non-finite value) becomes NaN."""
    merged: dict[int, dict[str, float]] = {}
    for record in records:
        values = merged.setdefault(int(record["step"]), {})
        for key, value in record.items():
            if key != "step" and (value is None or isinstance(value, (int, float))):
                values[key] = math.nan if value is None else float(value)
    return dict(sorted(merged.items()))


def series(metrics: dict[int, dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    steps = [step for step, values in metrics.items() if key in values]
    return steps, [metrics[step][key] for step in steps]


def metric_keys(metrics: dict[int, dict[str, float]]) -> list[str]:
    return sorted({key for values in metrics.values() for key in values})


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys (`model.video.name`) to values as JSON text, as they would be given on a command line."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


def metrics_table(results: dict[str, float], per_class: bool = False) -> str:
    """results.json as an aligned two-column table; per-answer QA precision / recall / F1 only when asked
    (they stay in results.json)."""
    shown = {k: v for k, v in results.items() if per_class or not PER_ANSWER_METRIC.search(k)}
    width = max((len(k) for k in shown), default=0)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
    lines += [f"{k.ljust(width)}  {v:.4g}" if isinstance(v, (int, float)) else f"{k.ljust(width)}  {v}"
              for k, v in sorted(shown.items())]
    if len(shown) < len(results):
        lines.append(f"({len(results) - len(shown)} per-answer QA metrics are in results.json)")
    return "\n".join(lines)
