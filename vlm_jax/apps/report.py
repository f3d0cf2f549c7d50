"""`vlm report`: one self-contained HTML page about a run, to read in a browser or to mail.

    path = write_report("runs/pretrain")                  # runs/pretrain/report.html
    screenshot(path, "docs/report.png")                   # for the docs (needs chromium)

The page shows, in order: the run (workdir, task, step, seed, the resolved config), its loss curves and
learning rate, the validation metrics over steps (QA accuracy per question type against chance, and
text-to-video R@1 per caption style, on figures of their own) and the final results.json, a research
table when one is found next to the run, retrieval examples (runs that embed text and video), QA
examples (QA runs) and explanation heatmaps passed in by the caller. Every picture is a base64 `data:`
URI and the page has no script, external style sheet or font; its Content-Security-Policy allows
nothing but inline styles and `data:` images, so a browser shows a reference that is not embedded as a
broken image.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from vlm_jax.data import features, moving_shapes_language, moving_shapes_scene, pipeline, show
from vlm_jax.errors import UserError

REPORT_NAME = "report.html"
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
RESEARCH_TABLE_NAMES = ("table.md", "research.md")  # looked for in the workdir, then in its parent
EXAMPLES_SPLIT = "test"
RETRIEVAL_GALLERY = 1000  # retrieval examples rank at most this many clips of the split, so big splits stay quick
TOP_HITS = 5
QA_EXAMPLES = 6
STRIP_FRAMES = 4
STRIP_FRAME_PX = 64  # frames are upscaled (nearest neighbour) to at least this size so shapes are visible
EVAL_TABLE_STEPS = 8  # the validation table shows at most this many evaluations: the first, the last, spread between
BREAKDOWN_WIDTH = 8.0  # inches: the figures per question type or caption style have a line per kind and a legend
RANK_METRICS = ("MdR", "MnR")  # metric names ending so are ranks (lower is better), plotted apart from percentages
# results.json keys of per-answer QA precision / recall / F1 (shown only on request: there is one per answer)
PER_ANSWER_METRIC = re.compile(r"/qa/(precision|recall|f1)_(?!macro)")
# per-question-kind breakdowns (`qa/f1_macro_direction`): in the tables, not in the validation figure; their
# accuracies (`<split>/qa/acc_direction`) have a figure and a results table of their own
PER_KIND_METRIC = re.compile(rf"/qa/\w+_({'|'.join(moving_shapes_language.QA_TYPES)})$")
PER_KIND_ACCURACY = re.compile(rf"^([^/]+)/qa/acc_({'|'.join(moving_shapes_language.QA_TYPES)})$")  # (split, kind)
PER_STYLE_RECALL = re.compile(r"/retrieval/t2v_R@1_(\w+)$")  # text-to-video R@1 of one caption style (motion, ...)
PER_STYLE_METRIC = re.compile(r"/retrieval/t2v_R@\d+_\w+$")  # every per-style recall: kept out of the main figure
# The accuracy of a uniform guess among the answers a question type can have (moving_shapes_language.questions_for):
# 7 colours, 5 shapes, 7 motions, 4 sounds; count asks how many shapes there are (1-3) or how many move (0-3),
# taken as 4-way. Order questions are 7-way (colour), 5-way (shape) or yes/no, so its 1/4 is approximate.
QA_CHANCE = {"colour": 1 / len(moving_shapes_scene.COLOUR_NAMES), "shape": 1 / len(moving_shapes_scene.SHAPES),
             "count": 1 / len(moving_shapes_language.COUNT_WORDS), "direction": 1 / len(moving_shapes_scene.MOTIONS),
             "order": 1 / 4, "sound": 1 / len(moving_shapes_scene.SOUNDS), "yesno": 1 / 2}
BROWSER_IMAGE_TYPES = {"PNG": "image/png", "GIF": "image/gif", "JPEG": "image/jpeg", "WEBP": "image/webp"}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def write_report(workdir: str | Path, out: str | Path | None = None, *,
                 explanations: Sequence[tuple[str, str | Path]] = (), examples: bool = True, max_queries: int = 4,
                 research_table: str | Path | None = None, predictor=None) -> Path:
    """Write the run's report (default `workdir/report.html`) and return its path.

    `explanations` are (title, image path) pairs shown last; `examples=False` skips the retrieval and QA
    examples, which load the model (`predictor`, when the caller has it loaded already) and read the data
    set; `research_table` is a markdown file whose pipe tables are shown (default: the first of table.md /
    research.md in the workdir or its parent).
    """
    workdir = Path(workdir)
    run = _read_run(workdir)
    explanation_images = [(str(title), _data_uri(Path(path), f"explanation {title!r}")) for title, path in explanations]
    research_path = _research_table_path(workdir, research_table)
    sections = [("run", "The run", _run_section(workdir, run)),
                ("losses", "Losses and learning rate", _loss_section(run.metrics)),
                ("metrics", "Evaluation metrics", _metrics_section(run.metrics, run.results))]
    if research_path is not None:
        sections.append(("research", "Research table", _research_section(research_path)))
    if examples:
        sections.extend(_example_sections(workdir, run.config, max_queries, predictor))
    if explanation_images:
        sections.append(("explanations", "Explanations", _explanation_section(explanation_images)))
    out = Path(out) if out is not None else workdir / REPORT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(f"vlm report: {workdir.name}", sections), encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------- the run's files


@dataclasses.dataclass
class RunFiles:
    """What a run wrote: its resolved config, its metrics by step and its final results (empty when the
    run has not finished)."""
    config: dict[str, Any]
    metrics: dict[int, dict[str, float]]
    results: dict[str, Any]


def _read_run(workdir: Path) -> RunFiles:
    """config.json, metrics.jsonl (later lines winning, as after a resume) and results.json."""
    config_path, metrics_path, results_path = (workdir / name for name in ("config.json", "metrics.jsonl",
                                                                           "results.json"))
    if not config_path.is_file():
        raise UserError(f"{workdir} is not a run directory (no config.json)")
    records = _metric_records(metrics_path)
    if not records:
        raise UserError(f"{workdir} has no metrics yet (no lines in {metrics_path.name}); train the run first")
    results = _read_json(results_path) if results_path.is_file() else {}
    return RunFiles(_read_json(config_path), _by_step(records), results)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def _metric_records(path: Path) -> list[dict[str, Any]]:
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


def _by_step(records: Iterable[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """step -> {key: value} merged over the step's lines; None (a non-finite value) becomes NaN."""
    merged: dict[int, dict[str, float]] = {}
    for record in records:
        values = merged.setdefault(int(record["step"]), {})
        for key, value in record.items():
            if key != "step" and (value is None or isinstance(value, (int, float))):
                values[key] = math.nan if value is None else float(value)
    return dict(sorted(merged.items()))


def _series(metrics: dict[int, dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    steps = [step for step, values in metrics.items() if key in values]
    return steps, [metrics[step][key] for step in steps]


def _keys(metrics: dict[int, dict[str, float]]) -> list[str]:
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


# ------------------------------------------------------------------------------------------- sections


def _run_section(workdir: Path, run: RunFiles) -> str:
    flat = flatten_config(run.config)
    facts = [("workdir", str(workdir.absolute())),
             ("task", flat.get("train.task", "?")),
             ("step", str(max(run.metrics))),
             ("seed", flat.get("seed", "?")),
             ("data", f"{flat.get('data.name', '?')} ({flat.get('data.size', '?')}), {flat.get('data.num_frames', '?')}"
                      f" frames at {flat.get('data.image_size', '?')} px"),
             ("model", ", ".join(f"{part} {flat.get(f'model.{part}.name', '?')}"
                                 for part in ("video", "text", "audio", "fusion"))),
             ("finished", "yes (results.json)" if run.results else "no results.json yet")]
    rows = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in facts)
    config_rows = "".join(f"<tr><td><code>{_e(key)}</code></td><td><code>{_e(value)}</code></td></tr>"
                          for key, value in sorted(flat.items()))
    return (f'<table class="facts">{rows}</table>'
            f"<details><summary>The resolved config ({len(flat)} keys, from config.json)</summary>"
            f'<table class="config"><tr><th>key</th><th>value</th></tr>{config_rows}</table></details>')


def _loss_section(metrics: dict[int, dict[str, float]]) -> str:
    keys = _keys(metrics)
    train_losses = [k for k in keys if k == "train/loss" or re.fullmatch(r"train/[^/]+_loss", k)]
    if not train_losses:
        return "<p>No training losses were logged.</p>"
    validation = [k for k in keys if re.fullmatch(r"validation/[^/]+/([^/]+_)?loss", k)]
    has_rate = "train/learning_rate" in keys
    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_axis, rate_axis = figure.subplots(1, 2, width_ratios=(3, 1)) if has_rate else (figure.subplots(), None)
    colours = {}
    for index, key in enumerate(train_losses):
        name = key.split("/")[-1]
        colours[name] = f"C{index % 10}"
        loss_axis.plot(*_series(metrics, key), color=colours[name], linewidth=1.2, label=key)
    for key in validation:
        name = key.split("/")[-1]
        loss_axis.plot(*_series(metrics, key), linestyle="none", marker="o", markersize=5,
                       color=colours.get(name, "black"), markeredgecolor="black", label=key)
    loss_axis.set(title="losses (lines: training, markers: validation)", xlabel="step", ylabel="loss")
    _step_ticks(loss_axis, metrics, train_losses + validation)
    loss_axis.grid(alpha=0.3)
    loss_axis.legend(fontsize=7, ncols=2 if len(train_losses) + len(validation) > 6 else 1)
    if rate_axis is not None:
        rate_axis.plot(*_series(metrics, "train/learning_rate"), color="C0")
        rate_axis.set(title="learning rate", xlabel="step")
        _step_ticks(rate_axis, metrics, ["train/learning_rate"])
        rate_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        rate_axis.grid(alpha=0.3)
    return _figure_img(figure, "loss curves per loss and the learning rate")


def _step_ticks(axis, metrics: dict[int, dict[str, float]], keys: list[str]) -> None:
    """Steps are whole numbers: a tick at each of a few logged steps, else integer ticks."""
    steps = sorted({step for step, values in metrics.items() if any(k in values for k in keys)})
    if len(steps) <= 10:
        axis.set_xticks(steps)
    else:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _metrics_section(metrics: dict[int, dict[str, float]], results: dict[str, Any]) -> str:
    validation = [k for k in _keys(metrics) if k.startswith("validation/")]
    parts = ["<h3>Validation metrics over steps</h3>"]
    if validation:
        plotted = [k for k in validation if not (k.endswith("loss") or PER_ANSWER_METRIC.search(k)
                                                 or PER_KIND_METRIC.search(k) or PER_STYLE_METRIC.search(k))]
        if plotted:  # losses are on the loss figure, breakdowns on figures of their own
            parts.append(_figure_img(_validation_figure(metrics, plotted), "validation metrics over steps"))
        parts.extend(_breakdown_figures(metrics, validation))
        breakdown = [k for k in validation if PER_ANSWER_METRIC.search(k) or PER_KIND_METRIC.search(k)]
        parts.append(_validation_table(metrics, [k for k in validation if k not in breakdown]))
        if breakdown:
            parts.append(f"<details><summary>{len(breakdown)} QA metrics per question kind and per answer</summary>"
                         f"{_validation_table(metrics, breakdown)}</details>")
    else:
        parts.append("<p>No evaluation ran during training (<code>train.eval_every</code> was 0 or larger than "
                     "the run).</p>")
    parts.append("<h3>Final results (results.json)</h3>")
    if not results:
        parts.append("<p>The run has no results.json yet.</p>")
        return "".join(parts)
    accuracy_per_kind = [k for k in results if PER_KIND_ACCURACY.search(k)]  # a table of its own
    details = {k: v for k, v in results.items()
               if k not in accuracy_per_kind and (PER_ANSWER_METRIC.search(k) or PER_KIND_METRIC.search(k))}
    parts.append(_results_cards({k: v for k, v in results.items() if k not in details and k not in accuracy_per_kind}))
    if accuracy_per_kind:
        parts.append(_accuracy_per_kind_table(results))
    if details:
        parts.append(f"<details><summary>{len(details)} QA metrics per question kind and per answer</summary>"
                     f"{_results_cards(details)}</details>")
    return "".join(parts)


def _validation_figure(metrics: dict[int, dict[str, float]], keys: list[str]) -> Figure:
    """One panel per task, with rank metrics (lower is better) in a panel of their own."""
    panels: dict[str, dict[str, str]] = {}
    for key in keys:
        task = key.split("/")[1]
        panels.setdefault(f"{task} (rank)" if key.endswith(RANK_METRICS) else task, {})[key] = key.split("/", 2)[2]
    return _curves_figure(metrics, panels)


def _breakdown_figures(metrics: dict[int, dict[str, float]], validation: list[str]) -> list[str]:
    """Validation accuracy per question type, each type's chance level dotted in its colour, and text-to-video
    R@1 per caption style: which kinds a run learns, and when. Nothing for a breakdown the run did not log."""
    parts = []
    accuracy = {key: found.group(2) for key in validation if (found := PER_KIND_ACCURACY.search(key))}
    if accuracy:
        title = "Validation accuracy per question type"
        chance = {key: 100 * QA_CHANCE[kind] for key, kind in accuracy.items()}
        figure = _curves_figure(metrics, {title: accuracy}, chance, ylabel="accuracy (%)", min_width=BREAKDOWN_WIDTH)
        parts += [_figure_img(figure, title), f'<p class="small">Dotted lines: the chance levels, each in its type\'s '
                                              f'colour. {_e(_chance_note(accuracy.values()))}</p>']
    recall = {key: found.group(1) for key in validation if (found := PER_STYLE_RECALL.search(key))}
    if recall:
        title = "Validation text-to-video R@1 per caption style"
        figure = _curves_figure(metrics, {title: recall}, ylabel="R@1 (%)", min_width=BREAKDOWN_WIDTH)
        parts.append(_figure_img(figure, title))
    return parts


def _chance_note(kinds: Iterable[str]) -> str:
    """What the chance levels are, and that order's, which mixes question forms, is approximate."""
    note = "Chance is the accuracy of a uniform guess among a question type's answers."
    if "order" in kinds:
        note += f" Order's ({100 * QA_CHANCE['order']:.0f}%) is approximate: its questions are 7-way, 5-way or yes/no."
    return note


def _curves_figure(metrics: dict[int, dict[str, float]], panels: dict[str, dict[str, str]],
                   levels: dict[str, float] | None = None, ylabel: str = "", min_width: float = 5.0) -> Figure:
    """Panels side by side (title -> {key: label}), one line per key over steps, and a dotted line at
    `levels[key]` in the colour of the key's line."""
    levels = levels or {}
    figure = Figure(figsize=(min(11, max(min_width, 3.7 * len(panels))), 3.4), layout="constrained")
    for axis, (title, labels) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels.items()):
        for index, (key, label) in enumerate(labels.items()):
            line, = axis.plot(*_series(metrics, key), marker="o", markersize=3, linewidth=1, label=label)
            if key in levels:  # staggered dots, so that levels that coincide still show every colour
                axis.axhline(levels[key], color=line.get_color(), linewidth=2, dash_capstyle="round",
                             linestyle=(2 * index, (1, 2 * len(labels) - 1)))
        axis.set(title=title, xlabel="step", ylabel=ylabel)
        _step_ticks(axis, metrics, list(labels))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    return figure


def _validation_table(metrics: dict[int, dict[str, float]], keys: list[str]) -> str:
    steps = [step for step, values in metrics.items() if any(k in values for k in keys)]
    if len(steps) > EVAL_TABLE_STEPS:
        steps = [steps[i] for i in np.linspace(0, len(steps) - 1, EVAL_TABLE_STEPS).round().astype(int)]
    head = "".join(f'<th class="num">step {step}</th>' for step in steps)
    rows = "".join(f"<tr><td>{_e(key.removeprefix('validation/'))}</td>"
                   + "".join(f'<td class="num">{_e(_number(metrics[step].get(key)))}</td>' for step in steps)
                   + "</tr>" for key in keys)
    return f'<div class="scroll"><table><tr><th>validation metric</th>{head}</tr>{rows}</table></div>'


def _accuracy_per_kind_table(results: dict[str, Any]) -> str:
    """The final accuracy of each question type, one column per split (`test`, `test_novel`), beside its chance."""
    by_kind: dict[str, dict[str, Any]] = {}
    for key, value in results.items():
        if found := PER_KIND_ACCURACY.search(key):
            split, kind = found.groups()
            by_kind.setdefault(kind, {})[split] = value
    splits = sorted({split for values in by_kind.values() for split in values})
    head = "".join(f'<th class="num">{_e(split)}</th>' for split in splits)
    rows = "".join(f'<tr><td>{_e(kind)}</td><td class="num">{_e(_number(100 * QA_CHANCE[kind]))}</td>'
                   + "".join(f'<td class="num">{_e(_number(by_kind[kind].get(split)))}</td>' for split in splits)
                   + "</tr>" for kind in sorted(by_kind))
    return (f'<h4>Accuracy per question type (%)</h4><table><tr>'
            f'<th>question type</th><th class="num">chance</th>{head}</tr>{rows}</table>'
            f'<p class="small">{_e(_chance_note(by_kind))}</p>')


def _results_cards(results: dict[str, Any]) -> str:
    """results.json grouped by split and task (`<split>/<task>/<metric>`), one small table each."""
    groups: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    for key, value in sorted(results.items()):
        parts = key.split("/")
        split, task, metric = (parts[0], parts[1], "/".join(parts[2:])) if len(parts) > 2 else \
            (parts[0], "", parts[-1])
        groups.setdefault((split, task), []).append((metric, value))
    cards = []
    for (split, task), items in groups.items():
        rows = "".join(f'<tr><td>{_e(metric)}</td><td class="num">{_e(_number(value))}</td></tr>'
                       for metric, value in items)
        title = f"{split} / {task}" if task else split
        cards.append(f'<div class="card"><h4>{_e(title)}</h4><table>{rows}</table></div>')
    return f'<div class="cards">{"".join(cards)}</div>'


def _research_table_path(workdir: Path, given: str | Path | None) -> Path | None:
    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"no research table at {given}")
        return Path(given)
    for folder in (workdir, workdir.absolute().parent):
        for name in RESEARCH_TABLE_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def _research_section(path: Path) -> str:
    tables = pipe_tables_to_html(path.read_text(encoding="utf-8", errors="replace"))
    body = tables or "<p>The file has no markdown table.</p>"
    return f"<p>From <code>{_e(str(path.absolute()))}</code>.</p>{body}"


def pipe_tables_to_html(markdown: str) -> str:
    """Every markdown pipe table (a header row, a `|---|:---:|` row, body rows) as an HTML table; the rest
    of the text is left out. Cells are escaped; `code` spans and **bold** are kept; `\\|` is a literal |."""
    tables, lines = [], markdown.splitlines()
    index = 0
    while index < len(lines):
        if _is_table_row(lines[index]) and index + 1 < len(lines) and _is_separator(lines[index + 1]):
            header, aligns = _cells(lines[index]), [_alignment(c) for c in _cells(lines[index + 1])]
            index += 2
            body = []
            while index < len(lines) and _is_table_row(lines[index]):
                body.append(_cells(lines[index]))
                index += 1
            tables.append(_html_table(header, aligns, body))
        else:
            index += 1
    return "".join(tables)


def _is_table_row(line: str) -> bool:
    return line.strip().startswith("|")


def _is_separator(line: str) -> bool:
    cells = _cells(line)
    return bool(cells) and all(re.fullmatch(r":?-+:?", cell) for cell in cells)


def _cells(line: str) -> list[str]:
    text = line.strip().removeprefix("|")
    text = text[:-1] if text.endswith("|") and not text.endswith("\\|") else text
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", text)]


def _alignment(separator: str) -> str:
    if separator.startswith(":") and separator.endswith(":"):
        return "center"
    return "right" if separator.endswith(":") else "left"


def _html_table(header: list[str], aligns: list[str], body: list[list[str]]) -> str:
    def row(cells: list[str], tag: str) -> str:
        padded = cells + [""] * (len(header) - len(cells))
        return "<tr>" + "".join(f'<{tag} style="text-align:{aligns[i] if i < len(aligns) else "left"}">'
                                f"{_inline_markdown(cell)}</{tag}>" for i, cell in enumerate(padded)) + "</tr>"
    return (f'<div class="scroll"><table class="research">{row(header, "th")}'
            f'{"".join(row(cells, "td") for cells in body)}</table></div>')


def _inline_markdown(text: str) -> str:
    escaped = _e(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def _example_sections(workdir: Path, config: dict[str, Any], max_queries: int,
                      predictor=None) -> list[tuple[str, str, str]]:
    """Retrieval examples for runs that embed text and video, QA examples for QA runs; a run whose model
    or data cannot be loaded gets a note that says why instead."""
    task = config.get("train", {}).get("task")
    retrieval = task == "retrieval" or (task == "pretrain" and config.get("losses", {}).get("contrastive", 0) > 0)
    wanted = [name for name, on in (("retrieval", retrieval and max_queries > 0), ("qa", task == "qa")) if on]
    if not wanted:
        return []
    from vlm_jax.apps.predictor import Predictor  # loads JAX and the model: only when examples are asked for
    titles = {"retrieval": "Retrieval examples", "qa": "QA examples"}
    try:
        predictor = predictor or Predictor.load(workdir)
    except UserError as error:
        return [(name, titles[name], f'<p class="note">No examples: {_e(str(error))}.</p>') for name in wanted]
    makers = {"retrieval": lambda: _retrieval_examples(predictor, max_queries), "qa": lambda: _qa_examples(predictor)}
    sections = []
    for name in wanted:
        try:
            body = makers[name]()
        except UserError as error:
            body = f'<p class="note">No examples: {_e(str(error))}.</p>'
        sections.append((name, titles[name], body))
    return sections


def _retrieval_examples(predictor, max_queries: int) -> str:
    """Test captions as queries against the split's videos: the top hits, the true clip marked."""
    from vlm_jax.apps.predictor import dataset_clips
    source = dataset_clips(predictor.run, EXAMPLES_SPLIT, limit=RETRIEVAL_GALLERY)
    clips, video_embeddings = predictor.embed_videos(source.clips)
    captioned = [i for i, clip in enumerate(clips) if clip.metadata["captions"]]
    if not captioned:
        raise UserError(f"the {EXAMPLES_SPLIT} clips have no captions")
    picks = sorted({captioned[i] for i in np.linspace(0, len(captioned) - 1, min(max_queries, len(captioned)))
                    .round().astype(int)})
    queries = [clips[i].metadata["captions"][0] for i in picks]
    scores = predictor.embed_texts(queries) @ video_embeddings.T
    parts = [f"<p>The model (checkpoint step {predictor.step}) ranks the first {len(clips)} "
             f"{EXAMPLES_SPLIT} clips for each query, a caption of one of them. The {TOP_HITS} best are shown, "
             f"then the true clip when it is not among them; the true clip is framed in green.</p>"]
    for true_index, query, row in zip(picks, queries, scores):
        order = np.argsort(-row, kind="stable")
        true_rank = int(np.flatnonzero(order == true_index)[0]) + 1
        shown = list(order[:TOP_HITS]) + ([] if true_rank <= TOP_HITS else [true_index])  # the true clip always
        hits = []
        for index in shown:
            rank = int(np.flatnonzero(order == index)[0]) + 1
            is_true = index == true_index
            label = f"#{rank} · {row[index]:.3f}" + (" · true clip" if is_true else "")
            classes = "hit" + (" true" if is_true else "") + (" missed" if rank > TOP_HITS else "")
            hits.append(f'<figure class="{classes}">{_strip_img(clips[index].video)}'
                        f"<figcaption>{_e(label)}<br><small>{_e(clips[index].id)}</small></figcaption></figure>")
        verdict = "ranked first" if true_rank == 1 else f"at rank {true_rank} of {len(clips)}"
        parts.append(f'<div class="example"><p class="query">“{_e(query)}”</p>'
                     f'<p class="small">true clip {_e(clips[true_index].id)}: {_e(verdict)}</p>'
                     f'<div class="hits">{"".join(hits)}</div></div>')
    return "".join(parts)


def _qa_examples(predictor) -> str:
    """A few test clips, each with one of its questions (cycling through the question kinds), the model's
    answer and the true one."""
    from vlm_jax.apps.predictor import dataset_clips
    _, records = pipeline.open_split(predictor.run.spec, EXAMPLES_SPLIT)
    rows, right = [], 0
    for clip in dataset_clips(predictor.run, EXAMPLES_SPLIT).clips:
        record = records[clip.metadata["position"]]
        questions, answers = features.texts(record["questions"]), features.texts(record["answers"])
        if not questions:
            continue
        pick = len(rows) % len(questions)
        kinds = features.texts(record["question_types"])
        kind = kinds[pick] if pick < len(kinds) else ""
        (_, ranked), = predictor.answers([clip], questions[pick], top=3)
        answer, probability = ranked[0]
        correct = answer == answers[pick]
        right += correct
        others = ", ".join(f"{name} {p:.2f}" for name, p in ranked[1:])
        rows.append(f'<tr class="{"right" if correct else "wrong"}"><td>{_strip_img(clip.video)}<br>'
                    f"<small>{_e(clip.id)}</small></td><td>{_e(kind)}</td><td>{_e(questions[pick])}</td>"
                    f"<td><strong>{_e(answer)}</strong> {probability:.2f}<br><small>then {_e(others)}</small></td>"
                    f'<td>{_e(answers[pick])}</td><td class="mark">{"✓ right" if correct else "✗ wrong"}</td></tr>')
        if len(rows) == QA_EXAMPLES:
            break
    if not rows:
        raise UserError(f"the {EXAMPLES_SPLIT} clips have no questions")
    return (f"<p>The model (checkpoint step {predictor.step}) on the first {EXAMPLES_SPLIT} clips with questions: "
            f"{right} of {len(rows)} right.</p><table class=\"qa\"><tr><th>clip</th><th>kind</th><th>question</th>"
            f"<th>model's answer</th><th>true answer</th><th></th></tr>{''.join(rows)}</table>")


def _explanation_section(images: list[tuple[str, str]]) -> str:
    return "".join(f'<figure class="explanation"><img src="{uri}" alt="{_e(title)}">'
                   f"<figcaption>{_e(title)}</figcaption></figure>" for title, uri in images)


# ------------------------------------------------------------------------------------------- pictures


def _strip_img(video: np.ndarray) -> str:
    """A few evenly spaced frames of a clip side by side, as an embedded PNG."""
    frame_ids = np.linspace(0, video.shape[0] - 1, min(STRIP_FRAMES, video.shape[0])).round().astype(int)
    tiles = [show.upscale(video[i], STRIP_FRAME_PX) for i in frame_ids]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + show.GAP * (len(tiles) - 1), tiles[0].height),
                      show.BACKGROUND)
    for column, tile in enumerate(tiles):
        strip.paste(tile, (column * (tile.width + show.GAP), 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return f'<img src="{_base64_uri(buffer.getvalue(), "image/png")}" alt="frames {", ".join(map(str, frame_ids))}">'


def _figure_img(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=100)
    return f'<img class="figure" src="{_base64_uri(buffer.getvalue(), "image/png")}" alt="{_e(alt)}">'


def _data_uri(path: Path, what: str) -> str:
    """An image file as a data: URI with the MIME type of its actual format; UserError when unreadable."""
    try:
        with Image.open(path) as image:
            mime = BROWSER_IMAGE_TYPES.get(image.format or "")
    except (OSError, ValueError) as error:
        raise UserError(f"{what}: {path} is not a readable image ({error})") from None
    if mime is None:
        raise UserError(f"{what}: {path} is {image.format}, which browsers may not show; use PNG, GIF or JPEG")
    return _base64_uri(path.read_bytes(), mime)


def _base64_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# ------------------------------------------------------------------------------------------- the page


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not isinstance(value, (int, float)):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d232a; background: #f6f7f9; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { border-bottom: 2px solid #d5dae1; padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 22px 0 8px; } h4 { margin: 0 0 6px; font-size: 0.95em; } .cards + h4 { margin-top: 16px; }
nav { font-size: 0.92em; color: #555; } nav a { color: #2758a8; margin-right: 14px; text-decoration: none; }
section { background: #fff; border-radius: 8px; padding: 4px 20px 18px; margin-top: 18px;
          box-shadow: 0 1px 3px rgba(0, 0, 0, 0.08); }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.facts th { width: 90px; background: none; color: #555; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em; }
details { margin-top: 12px; } summary { cursor: pointer; color: #2758a8; }
table.config td { padding: 1px 10px; }
.scroll { overflow-x: auto; }
img.figure { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #e3e6ea; border-radius: 6px; padding: 8px 10px; background: #fbfcfd; }
.example { margin: 14px 0 20px; } .query { font-size: 1.05em; font-weight: 600; margin: 0; }
.small, small { color: #666; font-size: 0.85em; }
.hits { display: grid; grid-template-columns: repeat(6, minmax(0, 1fr)); gap: 8px; }
figure { margin: 0; } figure.hit { padding: 3px; border: 3px solid transparent; border-radius: 5px; }
figure.hit img { width: 100%; height: auto; }
figure.hit.true { border-color: #2e9b4b; background: #eaf7ee; } figure.hit.missed { border-style: dashed; }
figcaption { font-size: 0.8em; color: #333; } figure img { image-rendering: pixelated; display: block; }
table.qa td { vertical-align: middle; } tr.right td.mark { color: #2e9b4b; font-weight: 600; }
tr.wrong td.mark { color: #c0392b; font-weight: 600; }
figure.explanation { margin: 12px 0; } figure.explanation img { max-width: 100%; image-rendering: auto; }
figure.explanation figcaption { font-size: 0.95em; margin-top: 4px; }
.note { color: #8a5a00; background: #fff7e0; padding: 6px 10px; border-radius: 4px; }
"""


def _page(title: str, sections: list[tuple[str, str, str]]) -> str:
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{anchor}">{_e(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{_e(heading)}</h2>{content}</section>'
                   for anchor, heading, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><main><h1>{_e(title)}</h1><nav>written {written} · {nav}</nav>{body}</main></body></html>\n")


# ------------------------------------------------------------------------------------------- chromium


def run_chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Headless chromium with the flags that work on a bare machine and a fresh profile (one that is not
    shared with, or left over from, another run); UserError when chromium is not installed."""
    binary = shutil.which("chromium")
    if binary is None:
        raise UserError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="vlm_chromium_") as profile:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 2400) -> Path:
    """A PNG of the top `height` pixels of the page as chromium renders it `width` pixels wide (for docs)."""
    if not Path(html_path).is_file():
        raise UserError(f"no such page: {html_path}")
    png_path = Path(png_path).absolute()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)  # so that a failed run cannot pass off an old picture as its own
    try:
        result = run_chromium("--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={png_path}",
                              Path(html_path).absolute().as_uri())
    except subprocess.TimeoutExpired:
        raise UserError(f"chromium did not finish a screenshot of {html_path} in time") from None
    if result.returncode != 0 or not png_path.is_file():
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"chromium could not take a screenshot of {html_path} (exit {result.returncode}): {tail[0]}")
    return png_path


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
