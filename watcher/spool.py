"""Pages of fetched records kept on disk until the sync writes them: the fetch holds no database
lock, and a 10,000-study baseline does not sit in memory."""

from __future__ import annotations

import json
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any


class PageSpool:
    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile(prefix="watcher-spool-")  # noqa: SIM115  (closed by __exit__)
        self.sizes: list[int] = []

    def add(self, page: list[dict[str, Any]]) -> None:
        blob = zlib.compress(json.dumps(page, separators=(",", ":")).encode(), 1)
        self.file.write(blob)
        self.sizes.append(len(blob))

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        self.file.seek(0)
        for size in self.sizes:
            yield json.loads(zlib.decompress(self.file.read(size)))

    def __enter__(self) -> PageSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
