"""A small mixed folder built fresh in each test: every supported format, plus the files ingestion must leave
out (binary, .gitignore'd, oversized) and a symlink that escapes the folder."""

from __future__ import annotations

import os
from pathlib import Path

MARKDOWN = """---
title: Volcano Field Guide
tags: [geology, safety]
version: 3
author:
  name: Ann
published: 2024-01-02
draft: false
---
Intro before any heading.

# Eruptions

Strombolian eruptions throw lava bombs in short bursts.

## Warning signs

Swelling ground and sulfur smell come before an eruption.

# Evacuation

Follow the marked routes uphill and away from valleys.
"""

PYTHON = '''"""Tide tables."""

import math


def tide_height(hour: float) -> float:
    """Semi-diurnal tide model."""
    return math.sin(hour / 12.42 * 2 * math.pi)


class Harbour:
    """A harbour with a draft limit."""

    def __init__(self, depth: float) -> None:
        self.depth = depth

    def can_enter(self, draft: float, hour: float) -> bool:
        return self.depth + tide_height(hour) > draft
'''

RST = """Glacier Handbook
================

Crevasses open where the ice flows over bedrock steps.

Rope Teams
----------

Travel roped up, spaced ten metres apart.
"""

HTML = """<!doctype html><html><head><title>Desert Botany</title><style>p {color: red}</style>
<script>var cactusTracker = 1;</script></head>
<body><h1>Succulents</h1><p>Saguaro cacti store water in pleated stems.</p></body></html>"""


def make_pdf(path: Path, title: str, pages: list[str]) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))


def build_corpus(root: Path, outside: Path) -> Path:
    """Files under root/docs; `outside` is a folder beside it that a symlink inside points to."""
    docs = root / "docs"
    (docs / "notes").mkdir(parents=True)
    (docs / "src").mkdir()
    (docs / "build").mkdir()
    (docs / "guide.md").write_text(MARKDOWN)
    (docs / "notes" / "walrus.txt").write_text("Walrus colonies haul out on Arctic sea ice in summer.\n")
    (docs / "src" / "tides.py").write_text(PYTHON)
    (docs / "glacier.rst").write_text(RST)
    (docs / "botany.html").write_text(HTML)
    make_pdf(
        docs / "aurora.pdf",
        "Aurora Observations",
        ["Auroras glow green when solar wind hits oxygen.", "Magnetometers measure the geomagnetic storm."],
    )
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (docs / ".gitignore").write_text("build/\n*.tmp\n")
    (docs / "build" / "generated.txt").write_text("Generated output about penguins.\n")
    (docs / "scratch.tmp").write_text("Temporary note about penguins.\n")
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("The launch code is swordfish.\n")
    os.symlink(outside / "secret.txt", docs / "notes" / "linked-secret.txt")
    return docs
