"""The report's one intermediate: sections of paragraphs, notes, tables and figures.

Design decisions
- Section builders (`results`, `downstream`) produce only these objects and `render` turns
  them into Markdown and HTML, so both formats show the same content.
- Table cells are already formatted strings (see `formatting`); the renderers add no numbers.
- A figure is a file on disk: Markdown links it by relative path, HTML embeds its bytes
  through `Figure.data_uri`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

#: What a table cell shows for a value that is missing.
DASH = "—"


@dataclass
class Table:
    key: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str

    @property
    def data_uri(self) -> str:
        mime = {
            "png": "image/png",
            "jpg": "image/jpeg",
            "jpeg": "image/jpeg",
            "svg": "image/svg+xml",
        }
        kind = mime.get(self.path.suffix.lower().lstrip("."), "application/octet-stream")
        return f"data:{kind};base64," + base64.b64encode(self.path.read_bytes()).decode("ascii")


@dataclass
class Section:
    title: str
    anchor: str
    text: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
