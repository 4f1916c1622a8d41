"""`anobench report --html`: one self-contained HTML file that opens offline in a browser.

Per dataset: the tables (per model beside the published numbers, with 95% intervals where
recorded), the cost table, the per-defect tables, the metric bars, and per class the grid of maps
and each model's worst-ranked images (good images it scores highest, defective ones lowest).
Every image is embedded as a data URI; nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from rich.console import Console

from anobench.figures import (
    ClassPictures,
    Gallery,
    Thumbnail,
    class_pictures,
    metric_bars,
    png_bytes,
)
from anobench.results import RECORD_COLUMNS, write_bytes_atomic
from anobench.tables import (
    DATASET_TITLES,
    TextTable,
    build_defect_tables,
    build_tables,
    format_entry,
)

HTML_FILE = "report.html"
JPEG_QUALITY = 85
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; color: #222; }
body { margin: 2em auto; padding: 0 2em; max-width: 1200px; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 2px solid #ccc; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 1em 0 0.3em; font-variant-numeric: tabular-nums; }
caption { font-weight: 600; text-align: left; padding-bottom: 0.3em; }
th, td { padding: 2px 10px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 1px solid #444; } tr.rule td { border-top: 1px solid #999; }
p.notes { color: #555; font-size: 12px; margin: 0 0 1.5em; max-width: 70em; }
img { max-width: 100%; height: auto; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; margin-bottom: 0.5em; }
figure { margin: 0; width: 220px; } figure img { width: 100%; }
figcaption { font-size: 11px; color: #444; word-break: break-all; }
h4 { margin: 1em 0 0.3em; } .row-title { font-size: 12px; color: #555; margin: 0.4em 0; }
"""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    """[H, W, 3] floats in [0, 1] (or uint8) as a JPEG."""
    if pixels.dtype != np.uint8:
        pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def figure_jpeg(figure: Figure) -> bytes:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return jpeg_bytes(np.asarray(canvas.buffer_rgba())[..., :3])


def image_tag(data: bytes, mime: str, alt: str) -> str:
    return f'<img src="{data_uri(data, mime)}" alt="{html.escape(alt)}">'


def table_html(table: TextTable) -> str:
    """A TextTable as an HTML table: title as caption, rules as lines, best values bold."""
    lines = [f"<table><caption>{html.escape(table.title)}</caption><thead><tr>"]
    lines.append("".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr></thead>")
    lines.append("<tbody>")
    for index, row in enumerate(table.rows):
        bold = table.bold[index] if index < len(table.bold) else set()
        cells = []
        for column, entry in enumerate(row):
            text = html.escape(format_entry(entry, table.n_seeds))
            cells.append(f"<td>{f'<strong>{text}</strong>' if column in bold else text}</td>")
        rule = ' class="rule"' if index in table.rules else ""
        lines.append(f"<tr{rule}>{''.join(cells)}</tr>")
    lines.append("</tbody></table>")
    lines.append(f'<p class="notes">{html.escape("; ".join(table.notes))}</p>')
    return "\n".join(lines)


def _thumbnails(title: str, thumbnails: Sequence[Thumbnail]) -> list[str]:
    parts = [f'<p class="row-title">{html.escape(title)}</p><div class="gallery">']
    for thumbnail in thumbnails:
        image = image_tag(jpeg_bytes(thumbnail.pixels), "image/jpeg", thumbnail.caption)
        caption = html.escape(thumbnail.caption)
        parts.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
    parts.append("</div>")
    return parts


def gallery_html(gallery: Gallery) -> str:
    parts = [f"<h4>{html.escape(gallery.label)}</h4>"]
    if gallery.note:
        parts.append(f'<p class="notes">{html.escape(gallery.note)}</p>')
        return "\n".join(parts)
    for title, thumbnails in (
        ("good images it scores highest (false positives)", gallery.false_positives),
        ("defective images it scores lowest (false negatives)", gallery.false_negatives),
    ):
        parts += _thumbnails(title, thumbnails)
    return "\n".join(parts)


def class_html(pictures: ClassPictures) -> str:
    anchor = _anchor(pictures.dataset, pictures.category)
    parts = [f'<h3 id="{anchor}">{html.escape(pictures.category)}</h3>']
    parts.append(image_tag(figure_jpeg(pictures.grid), "image/jpeg", f"maps of {anchor}"))
    parts += [gallery_html(g) for g in pictures.galleries]
    return "\n".join(parts)


def _anchor(*names: str) -> str:
    return "-".join("".join(c if c.isalnum() else "_" for c in name) for name in names)


def dataset_html(
    dataset: str,
    data: pd.DataFrame,
    records: list[dict[str, Any]],
    published: pd.DataFrame | None,
    pictures: list[ClassPictures],
) -> str:
    """One dataset's section: tables, per-defect tables, metric bars, per class maps and images."""
    title = DATASET_TITLES.get(dataset, dataset)
    parts = [f'<h2 id="{_anchor(dataset)}">{html.escape(title)}</h2>', "<h3>Tables</h3>"]
    parts += [table_html(t.table) for t in build_tables(data, published, True) if t.terminal]
    defects = build_defect_tables([r for r in records if r["dataset"] == dataset])
    if defects:
        parts.append("<h3>Per defect type</h3>")
        parts += [table_html(t.table) for t in defects]
    parts.append("<h3>Metrics per class</h3>")
    parts.append(image_tag(png_bytes(metric_bars(data)), "image/png", f"metric bars, {title}"))
    if pictures:
        links = " ".join(
            f'<a href="#{_anchor(dataset, p.category)}">{html.escape(p.category)}</a>'
            for p in pictures
        )
        parts.append(f"<h3>Maps and worst-ranked images per class</h3><nav>{links}</nav>")
        parts.append(
            '<p class="notes">Each grid: three defective images (defect types in turn) and a good '
            "one, ground truth outlined in green, each model's map over the image. Below it, per "
            "model, the good images it scores highest and the defective images it scores lowest, "
            "with their rank among all test images by the model's image score.</p>"
        )
        parts += [class_html(p) for p in pictures]
    return "\n".join(parts)


def html_document(results_dir: Path, n_cells: int, sections: list[tuple[str, str]]) -> str:
    """The page around the dataset sections [(dataset, html)]."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    nav = " ".join(
        f'<a href="#{_anchor(name)}">{html.escape(DATASET_TITLES.get(name, name))}</a>'
        for name, _ in sections
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>anobench report: {html.escape(str(results_dir))}</title>",
            f"<style>{_STYLE}</style></head><body>",
            "<h1>anobench report</h1>",
            f'<p class="notes">{n_cells} finished cells under {html.escape(str(results_dir))}; '
            f"written {stamp}. Values in percent; [low, high]: 95% interval.</p>",
            f"<nav>{nav}</nav>",
            *(body for _, body in sections),
            "</body></html>",
        ]
    )


def write_html_report(
    results_dir: Path,
    records: list[dict[str, Any]],
    frame: pd.DataFrame,
    published: pd.DataFrame | None,
    out_dir: Path,
    console: Console,
) -> Path:
    """Write report.html into out_dir; returns its path."""
    pictures = list(class_pictures(results_dir, records, frame, console, galleries=True))
    sections = []
    for dataset, data in frame.groupby("dataset", sort=True):
        mine = [p for p in pictures if p.dataset == dataset]
        sections.append((str(dataset), dataset_html(str(dataset), data, records, published, mine)))
    n_cells = len(frame.drop_duplicates(subset=list(RECORD_COLUMNS)))
    path = out_dir / HTML_FILE
    write_bytes_atomic(path, html_document(results_dir, n_cells, sections).encode())
    return path
