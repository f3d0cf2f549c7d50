"""`write_report` on a micro pretraining run: a single HTML file whose every picture is embedded, whose
sections match the run, whose text is escaped, and which headless chromium renders with every image
loaded and no console error; plus its user errors, the pipe-table converter and `screenshot`."""

import base64
import html
import io
import json
import re
import shutil
from html.parser import HTMLParser

import pytest
from PIL import Image

from conftest import run_vlm, train_args
from vlm_jax.apps import page as webpage
from vlm_jax.apps import report
from vlm_jax.errors import UserError

STEPS = 4  # evaluations at step 2 (train.eval_every) and the final test evaluation at 4
RESEARCH_MD = """# A research table

Some prose that is not a table.

| variant | test t2v R@1 | note |
|---|---:|:---:|
| `vivit_joint` | 4.9 | **best** <b>so far</b> |
| a \\| b | 3.6 | - |
"""

needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="chromium is not installed: apt-get install chromium")


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory):
    """A finished micro pretraining run in runs/pretrain, with a research.md beside it in runs/."""
    workdir = tmp_path_factory.mktemp("runs") / "pretrain"
    run_vlm(*train_args(tiny_dataset, workdir, f"train.num_steps={STEPS}", "train.eval_every=2",
                        "optim.warmup_steps=1"))
    (workdir.parent / "research.md").write_text(RESEARCH_MD)
    return workdir


@pytest.fixture(scope="module")
def heatmap(tmp_path_factory):
    path = tmp_path_factory.mktemp("explain") / "heatmap.png"
    Image.new("RGB", (40, 30), (200, 40, 40)).save(path)
    return path


@pytest.fixture(scope="module")
def page(run_dir, heatmap):
    path = report.write_report(run_dir, explanations=[("saliency <of> test:0", heatmap)], max_queries=3)
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


class _Tags(HTMLParser):
    """Every start tag's name and attributes, and the ids of the sections in order."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.sections = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self.sections.append(attrs["id"])


def test_every_image_is_embedded_and_nothing_is_referenced(page):
    tags = _Tags(page).tags
    sources = [attrs["src"] for tag, attrs in tags if tag == "img"]
    # loss figure, validation figure, 3 queries x (5 hits + the true clip when missed) strips, the heatmap
    assert len(sources) >= 2 + 3 * 5 + 1
    for source in sources:
        header, _, payload = source.partition(",")
        assert header in ("data:image/png;base64", "data:image/gif;base64"), header[:40]
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.verify()
        assert image.format == header[len("data:image/"):-len(";base64")].upper()
    assert not re.search(r"https?:|file:|url\(|@import", page, re.IGNORECASE)
    assert not [tag for tag, attrs in tags if tag in ("script", "link", "iframe", "object", "embed")]
    assert not [attrs for tag, attrs in tags if tag != "img" and ("src" in attrs or "href" in attrs and
                                                                   not attrs["href"].startswith("#"))]
    assert f'content="{webpage.CONTENT_SECURITY_POLICY}"' in page


def test_sections_match_a_pretraining_run(page, run_dir):
    assert _Tags(page).sections == ["run", "losses", "metrics", "research", "retrieval", "explanations"]
    assert "QA examples" not in page  # a pretraining run answers no questions
    run_section = page[page.index('<section id="run">'):page.index('<section id="losses">')]
    assert html.escape(str(run_dir.absolute())) in run_section
    assert "<th>task</th><td>pretrain</td>" in run_section and f"<th>step</th><td>{STEPS}</td>" in run_section
    assert "<th>seed</th><td>0</td>" in run_section and "<details>" in run_section
    metrics = page[page.index('<section id="metrics">'):page.index('<section id="research">')]
    assert "step 2" in metrics and "pretrain/loss" in metrics  # validation over steps
    assert "<h4>test / retrieval</h4>" in metrics and "t2v_R@1" in metrics  # results.json, grouped
    research = page[page.index('<section id="research">'):page.index('<section id="retrieval">')]
    assert str(run_dir.parent / "research.md") in research and "Some prose" not in research
    assert "<code>vivit_joint</code>" in research and "<strong>best</strong> &lt;b&gt;so far&lt;/b&gt;" in research
    assert '<td style="text-align:left">a | b</td>' in research and 'style="text-align:right">4.9' in research
    retrieval = page[page.index('<section id="retrieval">'):page.index('<section id="explanations">')]
    examples = retrieval.split('class="example"')[1:]
    assert len(examples) == 3
    for example in examples:  # the top 5, then the true clip when it is not among them; it is framed once
        assert example.count('<figure class="hit') in (5, 6) and example.count('class="hit true') == 1
    assert "saliency &lt;of&gt; test:0" in page


def test_the_command_embeds_explanations_of_test_clips(run_dir, tmp_path):
    """`vlm report --explain 1`: one heatmap strip of test:0 with its first caption and the method used."""
    out = tmp_path / "report.html"
    result = run_vlm("report", "--workdir", str(run_dir), "--out", str(out), "--explain", "1")
    assert result.stdout.strip().endswith(f"wrote {out}")
    page = out.read_text(encoding="utf-8")
    explanations = page[page.index('<section id="explanations">'):]
    assert explanations.count("<img") == 1 and "(attention)" in explanations  # cross-attention, trained by VTM


def test_config_values_are_escaped(page, run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    rules = json.dumps(config["mesh"]["rules"])
    assert '"activation_batch"' in rules
    assert f"<code>{html.escape(rules)}</code>" in page and rules not in page
    assert "<code>model.video.vivit.depth</code></td><td><code>1</code>" in page


def _fake_run(workdir, config, metrics):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def _figures(monkeypatch) -> dict:
    """Filled, as the report is written, with each figure it embeds, by alt text."""
    figures = {}
    embed = webpage.figure_img

    def record(figure, alt):
        figures[alt] = figure
        return embed(figure, alt)

    monkeypatch.setattr(webpage, "figure_img", record)
    return figures


def _curves(axis) -> tuple[dict, dict]:
    """({label: (colour, values)} of the solid lines, {colour: level} of the horizontal dotted ones)."""
    lines = {line.get_label(): (line.get_color(), list(line.get_ydata())) for line in axis.get_lines()
             if line.get_linestyle() == "-"}
    levels = {line.get_color(): line.get_ydata()[0] for line in axis.get_lines() if line.get_linestyle() != "-"}
    return lines, levels


QA_KINDS = ("colour", "order", "yesno")  # some of the question types: only these get a line


def test_a_qa_run_shows_accuracy_per_question_type_against_chance(tmp_path, monkeypatch):
    workdir = tmp_path / "qa"
    validation = {step: {f"validation/qa/acc_{kind}": 10.0 * step + index for index, kind in enumerate(QA_KINDS)}
                  for step in (2, 4)}
    _fake_run(workdir, {"train": {"task": "qa"}},
              [{"step": 1, "train/loss": 3.0}]
              + [{"step": step, "validation/qa/acc": 40.0, "validation/qa/loss": 2.0,
                  "validation/qa/f1_macro_colour": 20.0, "validation/qa/f1_red": 5.0, **values}
                 for step, values in validation.items()])
    (workdir / "results.json").write_text(json.dumps(
        {"test/qa/acc": 41.0, "test/qa/acc_colour": 61.5, "test_novel/qa/acc_colour": 40.5, "test/qa/acc_yesno": 52.0,
         "test/qa/f1_macro_colour": 30.0, "test/qa/f1_red": 7.0}))
    figures = _figures(monkeypatch)
    page = report.write_report(workdir, examples=False).read_text()
    assert "Validation text-to-video R@1 per caption style" not in figures  # no retrieval keys
    main_lines, _ = _curves(figures["validation metrics over steps"].axes[0])
    assert sorted(main_lines) == ["acc"]  # the per-kind keys are on a figure of their own
    (axis,) = figures["Validation accuracy per question type"].axes
    lines, levels = _curves(axis)
    assert sorted(lines) == sorted(QA_KINDS)
    for kind in QA_KINDS:
        colour, values = lines[kind]
        assert values == [validation[step][f"validation/qa/acc_{kind}"] for step in (2, 4)]
        assert levels[colour] == pytest.approx({"colour": 100 / 7, "order": 25, "yesno": 50}[kind])
    assert len(levels) == len(QA_KINDS)
    assert "Order&#x27;s (25%) is approximate" in page
    results = page[page.index("<h3>Final results"):]
    assert ('<tr><td>colour</td><td class="num">14.29</td><td class="num">61.5</td><td class="num">40.5</td></tr>'
            in results)  # test and test_novel, beside chance
    assert '<tr><td>yesno</td><td class="num">50</td><td class="num">52</td><td class="num">–</td></tr>' in results
    assert "<td>acc_colour</td>" not in results  # in the table, not again in a card
    cards, details = results.split("<details>")
    assert "<td>acc</td>" in cards and "f1_macro_colour" not in cards and "f1_red" not in cards
    assert "f1_macro_colour" in details and "f1_red" in details


def test_a_retrieval_run_shows_recall_per_caption_style(tmp_path, monkeypatch):
    styles = ("motion", "count", "sound", "size")
    workdir = tmp_path / "retrieval"
    _fake_run(workdir, {"train": {"task": "retrieval"}},
              [{"step": 1, "train/loss": 3.0},
               {"step": 2, "validation/retrieval/t2v_R@1": 5.0,
                **{f"validation/retrieval/t2v_R@{k}_{style}": float(i + k) for i, style in enumerate(styles)
                   for k in (1, 5)}}])
    figures = _figures(monkeypatch)
    report.write_report(workdir, examples=False)
    assert "Validation accuracy per question type" not in figures
    main_lines, _ = _curves(figures["validation metrics over steps"].axes[0])
    assert sorted(main_lines) == ["t2v_R@1"]
    lines, levels = _curves(figures["Validation text-to-video R@1 per caption style"].axes[0])
    assert sorted(lines) == sorted(styles) and levels == {}  # no chance lines


def test_a_run_without_qa_metrics_has_no_figure_per_question_type(page):
    assert "per question type" not in page


def test_hostile_text_is_escaped_and_bad_explanations_are_user_errors(tmp_path):
    """Every text that reaches the page (config, metric names, titles, tables) is escaped."""
    hostile = "<script>alert(1)</script>"
    workdir = tmp_path / "run"
    _fake_run(workdir, {"seed": 3, "train": {"task": "caption"}, "note": hostile},
              [{"step": 1, "train/loss": 2.0, "train/caption_loss": 2.0, "train/learning_rate": 0.1},
               {"step": 2, "train/loss": None, "train/caption_loss": 1.5},  # a non-finite value
               {"step": 2, "validation/caption/loss": 1.7, "validation/caption/CIDEr": 3.0}])
    with open(workdir / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 3, "train/lo')  # a line cut short by a crash is passed over
    (workdir / "results.json").write_text(json.dumps({f"test/caption/{hostile}": 1.0}))
    (workdir / "table.md").write_text(f"| a |\n|---|\n| {hostile} |\n")
    out = report.write_report(workdir, tmp_path / "out" / "r.html",
                              explanations=[(hostile, _png(tmp_path / "x.png"))])
    page = out.read_text()
    assert "<script" not in page and html.escape(hostile) in page
    assert page.count(html.escape(hostile)) >= 5  # config, results card, research table, title and alt text
    assert _Tags(page).sections == ["run", "losses", "metrics", "research", "explanations"]
    (tmp_path / "not_an_image.png").write_text("no")
    with pytest.raises(UserError, match="not a readable image"):
        report.write_report(workdir, explanations=[("t", tmp_path / "not_an_image.png")])
    Image.new("RGB", (4, 4)).save(tmp_path / "heatmap.tiff")
    with pytest.raises(UserError, match="TIFF, which browsers may not show"):
        report.write_report(workdir, explanations=[("t", tmp_path / "heatmap.tiff")])
    with pytest.raises(UserError, match="no research table at"):
        report.write_report(workdir, research_table=tmp_path / "missing.md")


def _png(path):
    Image.new("RGB", (8, 8), (0, 0, 255)).save(path)
    return path


def test_a_directory_that_is_not_a_finished_run_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="is not a run directory") as error:
        report.write_report(tmp_path)
    assert "\n" not in str(error.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="has no metrics yet"):
        report.write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="has no metrics yet") as error:
        report.write_report(tmp_path)
    assert "\n" not in str(error.value)


def test_pipe_tables_to_html():
    converted = webpage.pipe_tables_to_html(RESEARCH_MD + "\n| not | a table |\n\n| x | y |\n|:-|-:|\n| 1 |\n")
    assert converted.count("<table") == 2 and ">not<" not in converted and "prose" not in converted
    assert '<th style="text-align:center">note</th>' in converted
    assert '<td style="text-align:right"></td>' in converted  # a short row is padded
    assert webpage.pipe_tables_to_html("no | table here") == ""


# ----------------------------------------------------------------------------------------- chromium

# Put into a copy of a page before its Content-Security-Policy (which then does not apply to it): records
# console.error calls, uncaught exceptions, resources that fail to load and CSP violations, and on load
# writes them with each image's loaded state into <pre id="vlm-check">. Chromium's own log is not enough:
# it prints every console message as INFO:CONSOLE whatever its level, and nothing for a broken image.
CHECKER = """<script>
(function () {
  var errors = [];
  var original = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
  window.addEventListener("error", function (event) {
    var target = event.target;
    errors.push(target && target.tagName ? "failed to load: " + target.tagName + " " + String(target.src).slice(0, 40)
                                         : "exception: " + event.message);
  }, true);
  document.addEventListener("securitypolicyviolation", function (event) {
    errors.push("CSP: " + event.violatedDirective + " " + event.blockedURI);
  });
  window.addEventListener("load", function () {
    var images = Array.prototype.map.call(document.images, function (image) {
      return image.complete && image.naturalWidth > 0;
    });
    var out = document.createElement("pre");
    out.id = "vlm-check";
    out.textContent = JSON.stringify({images: images, errors: errors});
    document.body.appendChild(out);
  });
})();
</script>"""


def browser_check(page: str, tmp_path) -> tuple[dict, list[str]]:
    """({"images": [loaded?], "errors": [...]}, chromium's CONSOLE log lines) for the page in headless chromium."""
    charset = '<meta charset="utf-8">'
    assert charset in page
    path = tmp_path / "checked.html"
    path.write_text(page.replace(charset, charset + CHECKER, 1), encoding="utf-8")
    result = webpage.run_chromium("--dump-dom", "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0",
                                 path.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="vlm-check">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"the page did not finish loading: {result.stdout[-500:]}"
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console


@needs_chromium
def test_the_browser_check_catches_broken_images_and_errors(tmp_path):
    """The check can fail: broken and external images, console.error and an exception are all caught."""
    good = webpage.base64_uri(_png(tmp_path / "good.png").read_bytes(), "image/png")
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{webpage.CONTENT_SECURITY_POLICY}; '
            f"script-src 'unsafe-inline'\"></head><body>"
            f'<img src="{good}"><img src="data:image/png;base64,AAAA"><img src="missing.png">'
            f'<img src="https://example.invalid/x.png">'
            f'<script>console.error("boom"); undefinedFunction();</script></body></html>')
    check, console = browser_check(page, tmp_path)
    assert check["images"] == [True, False, False, False]
    errors = "\n".join(check["errors"])
    assert "console.error: boom" in errors and "exception:" in errors and "undefinedFunction" in errors
    assert errors.count("failed to load: IMG") >= 2 and "CSP: img-src https://example.invalid/x.png" in errors
    assert any('"boom"' in line for line in console)


@needs_chromium
def test_the_report_renders_in_chromium_with_every_image_loaded(page, tmp_path):
    check, console = browser_check(page, tmp_path)
    assert len(check["images"]) == page.count("<img ") and all(check["images"]), check
    assert check["errors"] == [] and console == []


@needs_chromium
def test_screenshot_has_the_requested_size(page, run_dir, tmp_path):
    png = webpage.screenshot(run_dir / "report.html", tmp_path / "shots" / "report.png", width=900, height=700)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (900, 700)


def test_screenshot_without_chromium_is_a_user_error(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="no such page"):
        webpage.screenshot(tmp_path / "r.html", tmp_path / "r.png")
    (tmp_path / "r.html").write_text("<p>a page</p>")
    monkeypatch.setattr(webpage.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="chromium is not installed"):
        webpage.screenshot(tmp_path / "r.html", tmp_path / "r.png")
