"""The report's HTML: a self-contained page (escaping, numbers, its style sheet and Content-Security-Policy),
pictures as base64 `data:` URIs, markdown pipe tables as HTML, and headless chromium for screenshots."""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from vlm_jax.data import show
from vlm_jax.errors import UserError

CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STRIP_FRAMES = 4
STRIP_FRAME_PX = 64  # frames are upscaled (nearest neighbour) to at least this size so shapes are visible
BROWSER_IMAGE_TYPES = {"PNG": "image/png", "GIF": "image/gif", "JPEG": "image/jpeg", "WEBP": "image/webp"}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


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
    escaped = escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def strip_img(video: np.ndarray) -> str:
    """A few evenly spaced frames of a clip side by side, as an embedded PNG."""
    frame_ids = np.linspace(0, video.shape[0] - 1, min(STRIP_FRAMES, video.shape[0])).round().astype(int)
    tiles = [show.upscale(video[i], STRIP_FRAME_PX) for i in frame_ids]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + show.GAP * (len(tiles) - 1), tiles[0].height),
                      show.BACKGROUND)
    for column, tile in enumerate(tiles):
        strip.paste(tile, (column * (tile.width + show.GAP), 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return f'<img src="{base64_uri(buffer.getvalue(), "image/png")}" alt="frames {", ".join(map(str, frame_ids))}">'


def figure_img(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=100)
    return f'<img class="figure" src="{base64_uri(buffer.getvalue(), "image/png")}" alt="{escape(alt)}">'


def data_uri(path: Path, what: str) -> str:
    """An image file as a data: URI with the MIME type of its actual format; UserError when unreadable."""
    try:
        with Image.open(path) as image:
            mime = BROWSER_IMAGE_TYPES.get(image.format or "")
    except (OSError, ValueError) as error:
        raise UserError(f"{what}: {path} is not a readable image ({error})") from None
    if mime is None:
        raise UserError(f"{what}: {path} is {image.format}, which browsers may not show; use PNG, GIF or JPEG")
    return base64_uri(path.read_bytes(), mime)


def base64_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def escape(text: str) -> str:
    return html.escape(str(text), quote=True)


def number(value: Any) -> str:
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


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{anchor}">{escape(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{escape(heading)}</h2>{content}</section>'
                   for anchor, heading, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><main><h1>{escape(title)}</h1><nav>written {written} · {nav}</nav>{body}</main></body></html>\n")


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
