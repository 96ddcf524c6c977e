"""Pure: registry text made safe to show on one line, in a terminal, a subject or a digest."""

from __future__ import annotations

import re

# C0 and C1 control characters (terminal escapes, NUL, BEL, ...) and the invisible marks that
# reorder text (bidirectional overrides and isolates): registry text must not hide or fake what it says.
_HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


# The API gives text as CommonMark, with punctuation escaped ("psychotherapy \[PAP\]"): a reader sees it bare.
_MARKDOWN_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def clean(text: object) -> str:
    """Registry text on one line, as a reader should see it: hidden characters out, Markdown's
    escapes undone, every run of whitespace (line breaks too) one space."""
    return " ".join(_MARKDOWN_ESCAPE.sub(r"\1", _HIDDEN.sub("", str(text))).split())


def strip_hidden(text: str) -> str:
    """Hidden characters out, line breaks kept (for text this program laid out itself)."""
    return _HIDDEN.sub("", text)
