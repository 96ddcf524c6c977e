"""Jinja2 over `templates/` → the text and HTML parts of a digest. Registry text is untrusted:
the HTML template is autoescaped."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from watcher.digest import Digest, Rendered


def templates_dir() -> Path:
    """Inside the installed package (wheel), else the repository's top-level folder."""
    packaged = Path(__file__).resolve().parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def render(digest: Digest) -> Rendered:
    env = environment()
    text = env.get_template("digest.txt.j2").render(digest=digest)
    html = env.get_template("digest.html.j2").render(digest=digest)
    return Rendered(subject=digest.subject, text=text, html=html)
