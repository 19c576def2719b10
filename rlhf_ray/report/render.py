"""A report as Markdown, then the same page as one self-contained HTML file.

:class:`Report` collects headings, paragraphs, tables and figures as Markdown (readable in a
terminal: ``report.md``); :meth:`Report.write` saves it, converts it to HTML (the ``markdown``
package, tables extension) and embeds every local PNG it links as a base64 ``data:`` URI, so
``report.html`` opens offline with nothing beside it. Figures are saved with matplotlib's Agg
canvas (no pyplot, no display needed).
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_ray.errors import UserError
from rlhf_ray.jsonio import write_atomic

MD, HTML = "report.md", "report.html"
DPI = 100

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #ddd; } code { background: #f4f4f4; padding: 0 0.2em; }
em.skip { color: #a40; }
"""


def cell(v) -> str:
    """A table cell: floats to 4 significant decimals, pipes escaped, newlines flattened."""
    if isinstance(v, float):
        v = f"{v:.4f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


@dataclass
class Report:
    """Markdown under construction; figures go to ``out`` beside ``report.md``."""

    title: str
    out: Path
    lines: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def __post_init__(self):
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.lines += [f"# {self.title}", ""]

    def heading(self, text: str, level: int = 2) -> None:
        self.lines += ["#" * level + " " + text, ""]

    def text(self, s: str) -> None:
        self.lines += [s, ""]

    def bullets(self, items: list[str]) -> None:
        self.lines += [f"- {s}" for s in items] + [""]

    def skip(self, reason: str) -> None:
        """A section with nothing to show says why."""
        self.lines += [f"*Skipped: {reason}*", ""]

    def table(self, headers: list[str], rows: list[list]) -> None:
        self.lines += ["| " + " | ".join(cell(h) for h in headers) + " |",
                       "|" + "|".join("---" for _ in headers) + "|"]
        self.lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
        self.lines.append("")

    def figure(self, fig, name: str, caption: str) -> Path:
        """Save ``fig`` (a matplotlib Figure) as ``out/name.png`` and link it, ``caption`` below."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        buf = io.BytesIO()
        FigureCanvasAgg(fig)  # the Agg canvas: PNG output with no display or pyplot state
        fig.savefig(buf, dpi=DPI, format="png")  # constrained layout: nothing to trim
        path = write_atomic(self.out / f"{name}.png", buf.getvalue())
        self.figures.append(path)
        self.image(path, name, caption)
        return path

    def image(self, path: Path, alt: str, caption: str = "") -> None:
        """Link an existing image (by its path relative to this report's folder), ``caption`` below."""
        rel = os.path.relpath(path, self.out)
        self.lines += [f"![{alt}]({rel})", ""] + ([f"*{caption}*", ""] if caption else [])

    def markdown(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"

    def write(self) -> Path:
        """Write ``report.md`` and ``report.html`` into ``out``; returns the HTML path."""
        md = self.markdown()
        write_atomic(self.out / MD, md)
        return write_atomic(self.out / HTML, to_html(md, self.title, self.out))


_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")')


def embed_images(body: str, base: Path) -> str:
    """Replace every ``<img src="relative.png">`` by a base64 data URI of that file (read from ``base``)."""
    def sub(m: re.Match) -> str:
        src = html.unescape(m.group(2))
        if src.startswith(("data:", "http:", "https:")):
            return m.group(0)
        path = (base / src).resolve()
        if not path.is_file():
            raise UserError(f"{base / MD}: image {src} not found (looked for {path})")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"{m.group(1)}data:image/png;base64,{data}{m.group(3)}"

    return _SRC.sub(sub, body)


def to_html(md: str, title: str, base: Path) -> str:
    import markdown

    body = markdown.markdown(md, extensions=["tables", "sane_lists"], output_format="html")
    body = body.replace("<p><em>Skipped:", '<p><em class="skip">Skipped:')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            f"{embed_images(body, base)}\n</body></html>\n")
