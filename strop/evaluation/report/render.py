"""Rendering the sections twice: `report.md` and a self-contained `report.html`.

Design decisions
- One intermediate (sections of paragraphs, notes, tables and figures, see `document`)
  rendered twice: Markdown with figures linked by path relative to the output folder, and
  HTML through a Jinja template with figures embedded as base64 data URIs so the page is a
  single file.
- The template stays in `strop/evaluation/report/templates/report.html.j2` (package data
  `strop = ["evaluation/report/templates/*.j2"]` in pyproject.toml).
- Notes and paragraphs name commands in Markdown `code` spans; the HTML escapes the text
  first, then turns those spans into `<code>`.
- Banners (a collapsed run) go above every section in both formats. Text from the runs'
  files is escaped in Markdown too (`md_text`): Markdown passes raw HTML through.
- The HTML marks `<body data-images-loaded="true">` once every image has decoded, which the
  headless-browser test reads back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from markupsafe import Markup, escape

from strop import __version__
from strop.evaluation.report.document import Section, Table

_TEMPLATES = Path(__file__).parent / "templates"


#: What Markdown renderers take for raw HTML: `<` opening a tag, a closing tag, a comment or
#: a declaration. A comparison ("n = 4 < 10") is not one and stays readable as written.
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")


def md_text(text: str) -> str:
    """Text from the runs' files as Markdown shows it, not as HTML it runs: a `<` that would
    open a tag is escaped (a run name or summary field holding `<script>` is shown, never
    executed), with the `>` that could close one."""
    text = str(text)
    if not _HTML_START.search(text):
        return text
    return _HTML_START.sub("&lt;", text).replace(">", "&gt;")


def _md_table(t: Table) -> list[str]:
    def esc(cell: str) -> str:
        return md_text(cell).replace("|", "\\|")

    lines = [f"*{t.caption}*", ""] if t.caption else []
    lines += ["| " + " | ".join(esc(h) for h in t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t.rows]
    return lines + [""]


def render_markdown(
    title: str, subtitle: str, sections: list[Section], base: Path, banners: Sequence[str] = ()
) -> str:
    out = [f"# {md_text(title)}", "", md_text(subtitle), ""]
    for banner in banners:  # above everything: a run whose numbers mean little
        out += [f"> **{md_text(banner)}**", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for p in sec.text:
            out += [md_text(p), ""]
        for n in sec.notes:
            out += [f"> {md_text(n)}", ""]
        for t in sec.tables:
            out += _md_table(t)
        for f in sec.figures:
            out += [
                f"![{md_text(f.caption)}]({Path(os.path.relpath(f.path, base)).as_posix()})",
                "",
                f"*{md_text(f.caption)}*",
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


_CODE_SPAN = re.compile(r"`([^`]+)`")


def inline_code(text: str) -> Markup:
    """Escape `text`, then turn Markdown `code` spans into <code> (notes name commands)."""
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(text))))


def render_html(
    title: str, subtitle: str, sections: list[Section], banners: Sequence[str] = ()
) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters["inline_code"] = inline_code
    n_images = sum(len(s.figures) for s in sections)
    return env.get_template("report.html.j2").render(
        title=title,
        subtitle=subtitle,
        sections=sections,
        banners=list(banners),
        n_images=n_images,
        version=__version__,
    )
