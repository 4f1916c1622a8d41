"""`anobench report --html`: one self-contained file, every image embedded and decodable; headless
Chromium renders it when installed (CI has none: that test skips)."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anobench.cli import main
from anobench.per_image import PER_IMAGE_FILE, write_per_image
from anobench.statistics import PerImage
from tests.test_figures import TEST_IMAGES, write_cell, write_class


class _Collector(HTMLParser):
    """Every tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def write_results(tmp_path: Path) -> Path:
    """Class 'carpet' with two models; model a kept per-image scores, model b predates them."""
    root, results = tmp_path / "data", tmp_path / "results"
    write_class(root)
    write_cell(results, root, "a", 0, 0.9)
    write_cell(results, root, "b", 0, 0.7)
    labels = np.array(["good" not in p for p in TEST_IMAGES])
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.5])  # the good 000.png scores high: a false positive
    folder = results / "mvtec" / "a" / "bb" / "carpet" / "seed0"
    write_per_image(folder / PER_IMAGE_FILE, PerImage(TEST_IMAGES, labels, scores))
    return results


def test_html_report_is_self_contained_and_every_image_decodes(tmp_path, capsys):
    results = write_results(tmp_path)
    assert main(["report", str(results), "--html", "--out", str(tmp_path / "out")]) == 0
    assert "report.html" in capsys.readouterr().out
    text = (tmp_path / "out" / "report.html").read_text()
    collector = _Collector()
    collector.feed(text)
    tags = collector.tags
    assert not [t for t, _ in tags if t in ("script", "link", "iframe")]
    links = [a.get("href") or "" for t, a in tags if t == "a"]
    assert links and all(href.startswith("#") for href in links)  # anchors only
    anchors = {a.get("id") for _, a in tags if a.get("id")}
    assert {href[1:] for href in links} <= anchors
    images = [a for t, a in tags if t == "img"]
    # bars + the class grid + model a's false positives (2 good) and false negatives (3)
    assert len(images) == 1 + 1 + 2 + 3
    for image in images:
        head, data = image["src"].split(",", 1)
        assert head in ("data:image/png;base64", "data:image/jpeg;base64")
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as decoded:
            decoded.verify()
    alts = [image["alt"] for image in images]
    assert alts[2].startswith("test/good/000.png")  # highest-scoring good image first
    assert alts[4].startswith("test/crack/001.png")  # lowest-scoring defective image first
    assert "no per_image.npz (older run)" in text  # model b
    assert text.count("<table>") == 5  # per model (a, b) and per paper metric; no cost recorded
    assert "Image AUROC" in text and "<caption>a (bb) on MVTec AD, percent</caption>" in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium")
def test_chromium_renders_the_report(tmp_path):
    results = write_results(tmp_path)
    assert main(["report", str(results), "--html", "--out", str(tmp_path / "out")]) == 0
    screenshot = tmp_path / "shot.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1000,1400",
            f"--screenshot={screenshot}",
            (tmp_path / "out" / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(screenshot) as png:
        pixels = np.asarray(png.convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (1400, 1000)
    ink = (pixels.sum(axis=-1) < 600).mean()  # text, rules and pictures on a white page
    assert 0.01 < ink < 0.9
