"""Jinja2 over `templates/` → the text and HTML parts of a digest. Registry text is untrusted:
the HTML template is autoescaped."""

from __future__ import annotations

import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from watcher.digest import Digest, Rendered


def templates_dir() -> Path:
    """Inside the installed package (wheel), else the repository's top-level folder."""
    packaged = Path(__file__).resolve().parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def wrap(text: str, width: int = 76, indent: str = "  ") -> str:
    """Jinja's wordwrap, but a line that already fits (most of them) costs nothing."""
    if len(text) <= width and "\n" not in text:
        return text
    return textwrap.fill(text, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["wrap"] = wrap
    return env


def render(digest: Digest) -> Rendered:
    env = environment()
    text = env.get_template("digest.txt.j2").render(digest=digest)
    html = env.get_template("digest.html.j2").render(digest=digest)
    return Rendered(subject=digest.subject, text=text, html=html)


def render_notice(name: str, **context: Any) -> Rendered:
    """A short email that is not a digest (`confirm`, `manage_link`): templates `NAME.txt.j2` and
    `NAME.html.j2`; the subject is the text part's first line."""
    env = environment()
    subject, _, text = env.get_template(f"{name}.txt.j2").render(**context).partition("\n")
    html = env.get_template(f"{name}.html.j2").render(subject=subject, **context)
    return Rendered(subject=subject.strip(), text=text.lstrip("\n"), html=html)
