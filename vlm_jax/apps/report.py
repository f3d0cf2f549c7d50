"""`vlm report`: one self-contained HTML page about a run, to read in a browser or to mail.

    path = write_report("runs/pretrain")                  # runs/pretrain/report.html
    page.screenshot(path, "docs/report.png")              # for the docs (needs chromium)

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

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vlm_jax.apps import page as webpage
from vlm_jax.apps import run_files
from vlm_jax.data import features, moving_shapes_language, moving_shapes_scene, pipeline
from vlm_jax.errors import UserError


REPORT_NAME = "report.html"
RESEARCH_TABLE_NAMES = ("table.md", "research.md")  # looked for in the workdir, then in its parent
EXAMPLES_SPLIT = "test"
RETRIEVAL_GALLERY = 1000  # retrieval examples rank at most this many clips of the split, so big splits stay quick
TOP_HITS = 5
QA_EXAMPLES = 6
EVAL_TABLE_STEPS = 8  # the validation table shows at most this many evaluations: the first, the last, spread between
BREAKDOWN_WIDTH = 8.0  # inches: the figures per question type or caption style have a line per kind and a legend
# The accuracy of a uniform guess among the answers a question type can have (moving_shapes_language.questions_for):
# 7 colours, 5 shapes, 7 motions, 4 sounds; count asks how many shapes there are (1-3) or how many move (0-3),
# taken as 4-way. Order questions are 7-way (colour), 5-way (shape) or yes/no, so its 1/4 is approximate.
QA_CHANCE = {"colour": 1 / len(moving_shapes_scene.COLOUR_NAMES), "shape": 1 / len(moving_shapes_scene.SHAPES),
             "count": 1 / len(moving_shapes_language.COUNT_WORDS), "direction": 1 / len(moving_shapes_scene.MOTIONS),
             "order": 1 / 4, "sound": 1 / len(moving_shapes_scene.SOUNDS), "yesno": 1 / 2}


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
    run = run_files.read_run(workdir)
    explanation_images = [(str(title), webpage.data_uri(Path(path), f"explanation {title!r}")) for title, path in explanations]
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
    out.write_text(webpage.page(f"vlm report: {workdir.name}", sections), encoding="utf-8")
    return out


def _run_section(workdir: Path, run: run_files.RunFiles) -> str:
    flat = run_files.flatten_config(run.config)
    facts = [("workdir", str(workdir.absolute())),
             ("task", flat.get("train.task", "?")),
             ("step", str(max(run.metrics))),
             ("seed", flat.get("seed", "?")),
             ("data", f"{flat.get('data.name', '?')} ({flat.get('data.size', '?')}), {flat.get('data.num_frames', '?')}"
                      f" frames at {flat.get('data.image_size', '?')} px"),
             ("model", ", ".join(f"{part} {flat.get(f'model.{part}.name', '?')}"
                                 for part in ("video", "text", "audio", "fusion"))),
             ("finished", "yes (results.json)" if run.results else "no results.json yet")]
    rows = "".join(f"<tr><th>{webpage.escape(name)}</th><td>{webpage.escape(value)}</td></tr>" for name, value in facts)
    config_rows = "".join(f"<tr><td><code>{webpage.escape(key)}</code></td><td><code>{webpage.escape(value)}</code></td></tr>"
                          for key, value in sorted(flat.items()))
    return (f'<table class="facts">{rows}</table>'
            f"<details><summary>The resolved config ({len(flat)} keys, from config.json)</summary>"
            f'<table class="config"><tr><th>key</th><th>value</th></tr>{config_rows}</table></details>')


def _loss_section(metrics: dict[int, dict[str, float]]) -> str:
    keys = run_files.metric_keys(metrics)
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
        loss_axis.plot(*run_files.series(metrics, key), color=colours[name], linewidth=1.2, label=key)
    for key in validation:
        name = key.split("/")[-1]
        loss_axis.plot(*run_files.series(metrics, key), linestyle="none", marker="o", markersize=5,
                       color=colours.get(name, "black"), markeredgecolor="black", label=key)
    loss_axis.set(title="losses (lines: training, markers: validation)", xlabel="step", ylabel="loss")
    _step_ticks(loss_axis, metrics, train_losses + validation)
    loss_axis.grid(alpha=0.3)
    loss_axis.legend(fontsize=7, ncols=2 if len(train_losses) + len(validation) > 6 else 1)
    if rate_axis is not None:
        rate_axis.plot(*run_files.series(metrics, "train/learning_rate"), color="C0")
        rate_axis.set(title="learning rate", xlabel="step")
        _step_ticks(rate_axis, metrics, ["train/learning_rate"])
        rate_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        rate_axis.grid(alpha=0.3)
    return webpage.figure_img(figure, "loss curves per loss and the learning rate")


def _step_ticks(axis, metrics: dict[int, dict[str, float]], keys: list[str]) -> None:
    """Steps are whole numbers: a tick at each of a few logged steps, else integer ticks."""
    steps = sorted({step for step, values in metrics.items() if any(k in values for k in keys)})
    if len(steps) <= 10:
        axis.set_xticks(steps)
    else:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def _metrics_section(metrics: dict[int, dict[str, float]], results: dict[str, Any]) -> str:
    validation = [k for k in run_files.metric_keys(metrics) if k.startswith("validation/")]
    parts = ["<h3>Validation metrics over steps</h3>"]
    if validation:
        plotted = [k for k in validation if not (k.endswith("loss") or run_files.PER_ANSWER_METRIC.search(k)
                                                 or run_files.PER_KIND_METRIC.search(k) or run_files.PER_STYLE_METRIC.search(k))]
        if plotted:  # losses are on the loss figure, breakdowns on figures of their own
            parts.append(webpage.figure_img(_validation_figure(metrics, plotted), "validation metrics over steps"))
        parts.extend(_breakdown_figures(metrics, validation))
        breakdown = [k for k in validation if run_files.PER_ANSWER_METRIC.search(k) or run_files.PER_KIND_METRIC.search(k)]
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
    accuracy_per_kind = [k for k in results if run_files.PER_KIND_ACCURACY.search(k)]  # a table of its own
    details = {k: v for k, v in results.items()
               if k not in accuracy_per_kind and (run_files.PER_ANSWER_METRIC.search(k) or run_files.PER_KIND_METRIC.search(k))}
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
        panels.setdefault(f"{task} (rank)" if key.endswith(run_files.RANK_METRICS) else task, {})[key] = key.split("/", 2)[2]
    return _curves_figure(metrics, panels)


def _breakdown_figures(metrics: dict[int, dict[str, float]], validation: list[str]) -> list[str]:
    """Validation accuracy per question type, each type's chance level dotted in its colour, and text-to-video
    R@1 per caption style: which kinds a run learns, and when. Nothing for a breakdown the run did not log."""
    parts = []
    accuracy = {key: found.group(2) for key in validation if (found := run_files.PER_KIND_ACCURACY.search(key))}
    if accuracy:
        title = "Validation accuracy per question type"
        chance = {key: 100 * QA_CHANCE[kind] for key, kind in accuracy.items()}
        figure = _curves_figure(metrics, {title: accuracy}, chance, ylabel="accuracy (%)", min_width=BREAKDOWN_WIDTH)
        parts += [webpage.figure_img(figure, title), f'<p class="small">Dotted lines: the chance levels, each in its type\'s '
                                              f'colour. {webpage.escape(_chance_note(accuracy.values()))}</p>']
    recall = {key: found.group(1) for key in validation if (found := run_files.PER_STYLE_RECALL.search(key))}
    if recall:
        title = "Validation text-to-video R@1 per caption style"
        figure = _curves_figure(metrics, {title: recall}, ylabel="R@1 (%)", min_width=BREAKDOWN_WIDTH)
        parts.append(webpage.figure_img(figure, title))
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
            line, = axis.plot(*run_files.series(metrics, key), marker="o", markersize=3, linewidth=1, label=label)
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
    rows = "".join(f"<tr><td>{webpage.escape(key.removeprefix('validation/'))}</td>"
                   + "".join(f'<td class="num">{webpage.escape(webpage.number(metrics[step].get(key)))}</td>' for step in steps)
                   + "</tr>" for key in keys)
    return f'<div class="scroll"><table><tr><th>validation metric</th>{head}</tr>{rows}</table></div>'


def _accuracy_per_kind_table(results: dict[str, Any]) -> str:
    """The final accuracy of each question type, one column per split (`test`, `test_novel`), beside its chance."""
    by_kind: dict[str, dict[str, Any]] = {}
    for key, value in results.items():
        if found := run_files.PER_KIND_ACCURACY.search(key):
            split, kind = found.groups()
            by_kind.setdefault(kind, {})[split] = value
    splits = sorted({split for values in by_kind.values() for split in values})
    head = "".join(f'<th class="num">{webpage.escape(split)}</th>' for split in splits)
    rows = "".join(f'<tr><td>{webpage.escape(kind)}</td><td class="num">{webpage.escape(webpage.number(100 * QA_CHANCE[kind]))}</td>'
                   + "".join(f'<td class="num">{webpage.escape(webpage.number(by_kind[kind].get(split)))}</td>' for split in splits)
                   + "</tr>" for kind in sorted(by_kind))
    return (f'<h4>Accuracy per question type (%)</h4><table><tr>'
            f'<th>question type</th><th class="num">chance</th>{head}</tr>{rows}</table>'
            f'<p class="small">{webpage.escape(_chance_note(by_kind))}</p>')


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
        rows = "".join(f'<tr><td>{webpage.escape(metric)}</td><td class="num">{webpage.escape(webpage.number(value))}</td></tr>'
                       for metric, value in items)
        title = f"{split} / {task}" if task else split
        cards.append(f'<div class="card"><h4>{webpage.escape(title)}</h4><table>{rows}</table></div>')
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
    tables = webpage.pipe_tables_to_html(path.read_text(encoding="utf-8", errors="replace"))
    body = tables or "<p>The file has no markdown table.</p>"
    return f"<p>From <code>{webpage.escape(str(path.absolute()))}</code>.</p>{body}"


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
        return [(name, titles[name], f'<p class="note">No examples: {webpage.escape(str(error))}.</p>') for name in wanted]
    makers = {"retrieval": lambda: _retrieval_examples(predictor, max_queries), "qa": lambda: _qa_examples(predictor)}
    sections = []
    for name in wanted:
        try:
            body = makers[name]()
        except UserError as error:
            body = f'<p class="note">No examples: {webpage.escape(str(error))}.</p>'
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
            hits.append(f'<figure class="{classes}">{webpage.strip_img(clips[index].video)}'
                        f"<figcaption>{webpage.escape(label)}<br><small>{webpage.escape(clips[index].id)}</small></figcaption></figure>")
        verdict = "ranked first" if true_rank == 1 else f"at rank {true_rank} of {len(clips)}"
        parts.append(f'<div class="example"><p class="query">“{webpage.escape(query)}”</p>'
                     f'<p class="small">true clip {webpage.escape(clips[true_index].id)}: {webpage.escape(verdict)}</p>'
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
        rows.append(f'<tr class="{"right" if correct else "wrong"}"><td>{webpage.strip_img(clip.video)}<br>'
                    f"<small>{webpage.escape(clip.id)}</small></td><td>{webpage.escape(kind)}</td><td>{webpage.escape(questions[pick])}</td>"
                    f"<td><strong>{webpage.escape(answer)}</strong> {probability:.2f}<br><small>then {webpage.escape(others)}</small></td>"
                    f'<td>{webpage.escape(answers[pick])}</td><td class="mark">{"✓ right" if correct else "✗ wrong"}</td></tr>')
        if len(rows) == QA_EXAMPLES:
            break
    if not rows:
        raise UserError(f"the {EXAMPLES_SPLIT} clips have no questions")
    return (f"<p>The model (checkpoint step {predictor.step}) on the first {EXAMPLES_SPLIT} clips with questions: "
            f"{right} of {len(rows)} right.</p><table class=\"qa\"><tr><th>clip</th><th>kind</th><th>question</th>"
            f"<th>model's answer</th><th>true answer</th><th></th></tr>{''.join(rows)}</table>")


def _explanation_section(images: list[tuple[str, str]]) -> str:
    return "".join(f'<figure class="explanation"><img src="{uri}" alt="{webpage.escape(title)}">'
                   f"<figcaption>{webpage.escape(title)}</figcaption></figure>" for title, uri in images)
