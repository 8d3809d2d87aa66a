"""A study's markdown and its plots as one HTML page, readable offline.

Every study writes markdown for people and PNG plots; this turns them into one self-contained file
beside the markdown (same stem, .html): the tables rendered (CommonMark with tables, raw HTML in the
markdown escaped), each plot inlined as a data: URI, headings given ids so that a page's contents
links work, links to another study's markdown pointed at its page. Nothing is fetched: no script, no
font, no stylesheet but the page's own, and a Content-Security-Policy that says so (no script may
run; the one style element allowed by its hash), so a report opened from a shared folder cannot
reach out.
"""

from __future__ import annotations

import base64
import hashlib
import html
import mimetypes
import re
from collections.abc import Sequence
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; }
body { margin: 2rem auto; max-width: 72rem; padding: 0 1rem; }
h1, h2, h3 { line-height: 1.25; }
h2 { border-top: 1px solid #d0d7de; padding-top: 1rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 1rem 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; white-space: nowrap; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 90%; }
pre { background: #f6f8fa; padding: 0.8rem; overflow-x: auto; }
figure { margin: 1rem 0; }
figure img, p img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #59636e; font-size: 90%; }
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
POLICY = f"default-src 'none'; img-src data:; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; form-action 'none'"


# (a study's markdown file, its plots): the order a reader wants them in; a study not named here has
# the plot of its own stem (editor.md: editor.png)
STUDIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("report.md", ("report.png",)),
    ("budget.md", ("budget.png",)),
    ("rank.md", ("rank.png",)),
    ("perf.md", ("perf.png", "perf_problems.png")),
    ("perplexity.md", ("perplexity.png",)),
    ("latency.md", ("latency_vs_prompt.png", "throughput_vs_concurrency.png")),
    ("editor.md", ("editor.png",)),
    ("load.md", ("load.png",)),
)


def plots_of(markdown_file: Path) -> list[Path]:
    names = dict(STUDIES).get(markdown_file.name, (markdown_file.with_suffix(".png").name,))
    return [markdown_file.parent / name for name in names]


def write_study(markdown_file: Path) -> Path:
    """A study's page: its markdown and its plots (what a study calls once it has written both)."""
    return write_page(markdown_file, plots_of(markdown_file))


def title_of(markdown: str, default: str) -> str:
    """A markdown page's first level-one heading, else default."""
    return next((line[2:].strip() for line in markdown.splitlines() if line.startswith("# ")), default)


def anchor(title: str) -> str:
    """The id a heading gets (GitHub's rule for plain titles): what a contents link points at."""
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def write_page(markdown_file: Path, plots: Sequence[Path] = ()) -> Path:
    """markdown_file rendered, with plots (the files that exist) after it, into markdown_file's stem
    .html; returns its path. Images the markdown links to, relative to it, are inlined too."""
    text = markdown_file.read_text()
    title = title_of(text, markdown_file.stem)
    body = render(text, markdown_file.parent)
    for plot in plots:
        if plot.is_file():
            name = html.escape(plot.name)
            body += f'<figure><img src="{_data_uri(plot)}" alt="{name}"><figcaption>{name}</figcaption></figure>\n'
    page = markdown_file.with_suffix(".html")
    page.write_text(document(title, body))
    return page


def document(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def render(text: str, folder: Path) -> str:
    """Markdown -> HTML: headings with ids, local images inlined, local .md links to their .html."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(text)
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and i + 1 < len(tokens):
            token.attrSet("id", anchor(tokens[i + 1].content))
        for child in token.children or ():
            _local(child, folder)
    return str(parser.renderer.render(tokens, parser.options, {}))


def _local(token: Token, folder: Path) -> None:
    if token.type == "image":
        source = str(token.attrGet("src") or "")
        path = folder / source
        if source and "://" not in source and not source.startswith("data:") and path.is_file():
            token.attrSet("src", _data_uri(path))
    elif token.type == "link_open":
        href = str(token.attrGet("href") or "")
        if href.endswith(".md") and "://" not in href and (folder / href).with_suffix(".html").is_file():
            token.attrSet("href", href[: -len(".md")] + ".html")


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"
