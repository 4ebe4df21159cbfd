"""The run report: report.md's tables and images reach report.html, and nothing in a name is markup."""
from html.parser import HTMLParser
import json

import numpy as np
import pytest
import torch

from vqvae.figures import save_grid
from vqvae.report import FIGURES, markdown_page, write_report

ROWS = {"real": 1.5, "reconstructions": 3.25, "samples": 6.5, "noise": 480.0}


class PageParts(HTMLParser):
    """The headings, table rows (as lists of cell texts) and image sources of a page."""

    def __init__(self):
        super().__init__()
        self.headings, self.rows, self.images, self.text = [], [], [], []
        self._cell = self._heading = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2"):
            self._heading = []
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("h1", "h2"):
            self.headings.append("".join(self._heading))
            self._heading = None

    def handle_data(self, data):
        self.text.append(data)
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)


def fake_run(run, figures):
    """A run folder holding only what the report reads: metrics.json, some figures, held-out codes."""
    run.mkdir()
    rows = {name: {"frechet_distance": fd, "precision": 0.5, "recall": 0.25, "confidence": 0.75,
                   "class_coverage": 0.875, "classes_present": 2} for name, fd in ROWS.items()}
    metrics = {"prior": {"codebook_size": 8, "conditional": True}, "evaluation": {
        "test_dataset": "bars", "reconstruction": {"num_images": 48, "mse": 0.01, "mse_clipped": 0.009,
                                                   "psnr_db": 20.5, "codes_used": 6, "dead_codes": 2,
                                                   "perplexity": 5.1},
        "prior": {"test_bits_per_code": 1.2345},
        "samples": {"rows": rows, "k": 3, "n": 24, "samples_vs_reconstructions": 2.0, "heldout": "bars: 24 and 24",
                    "classifier": {"heldout_accuracy": 1.0, "heldout_set": "bars-val", "train_images": 100},
                    "inception_fid": {"available": False, "reason": "no weights"}}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "samples.json").write_text(json.dumps({"temperature": 1.0, "top_k": 0, "top_p": 1.0, "guidance": 2.0}))
    for name in figures:
        save_grid(torch.zeros(4, 1, 8, 8), run / name, nrow=2)
    (run / "codes").mkdir()
    np.save(run / "codes" / "test.npy", np.arange(48, dtype=np.int16).reshape(3, 4, 4) % 8)


@pytest.mark.parametrize("figures", [[name for _, name in FIGURES if name != "codebook_usage.png"],
                                     ["samples.png"]])
def test_report_html_shows_every_table_row_and_image_of_the_markdown(tmp_path, figures):
    run = tmp_path / "run<b>&co"
    fake_run(run, figures)
    write_report(run)
    md = (run / "report.md").read_text()
    page = PageParts()
    page.feed((run / "report.html").read_text())
    # The sample-quality table: a header and one row per calibrated row, with its figures.
    assert page.rows[0][:3] == ["images", "Fréchet distance", "precision"]
    assert len(page.rows) == 1 + len(ROWS) and all(len(r) == 7 for r in page.rows)
    for row, (name, fd) in zip(page.rows[1:], ROWS.items()):
        assert row[:2] == [name, f"{fd:.3f}"] and row[-1] == "2"
    # Every image of the Markdown, and only those, in the page; each is a file of the run
    # (the codebook-usage histogram is drawn from codes/test.npy).
    shown = [img["src"] for img in page.images]
    assert shown == [name for _, name in FIGURES if (run / name).is_file()]
    assert "codebook_usage.png" in shown and all(f"({src})" in md for src in shown)
    assert all(img["alt"] for img in page.images)
    assert "## Prior" in md and "1.2345 bits per code given the class" in "".join(page.text)
    assert "samples drawn with temperature 1.0, top_k 0, top_p 1.0, guidance 2.0" in md
    # A name that looks like markup is text, in the title and the heading.
    assert page.headings[0] == "VQ-VAE run report: run<b>&co"
    assert "<b>" not in (run / "report.html").read_text()


def test_markdown_page_is_a_whole_page_with_its_title():
    html = markdown_page("# Title\n\n- a < b\n", title="t & u")
    assert html.startswith("<!doctype html>") and "<title>t &amp; u</title>" in html
    assert "<li>a &lt; b</li>" in html
