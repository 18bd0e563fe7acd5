"""The headers of a download, decided without I/O: byte ranges and Content-Disposition.

Ranges follow RFC 9110 §14: one range is served (206); several, or a malformed header,
are ignored and the whole file is served (200), as the RFC allows; a range that starts at
or past the end is unsatisfiable (416).

Content-Disposition follows RFC 6266 with RFC 8187 (formerly 5987) for the name: an
ASCII ``filename`` fallback (anything but printable ASCII, quotes and backslashes replaced
by ``_``) and the exact name as ``filename*=UTF-8''…``, percent-encoded, so no stored name
can break out of the header (quotes, CR/LF) whatever it contains.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
# RFC 8187 attr-char, less what quote() never escapes anyway.
_ATTR_SAFE: Final = "!#$&+-.^_`|~"
_ASCII_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\%]')
_MAX_FALLBACK: Final = 150


class RangeNotSatisfiable(Exception):
    """The Range asks only for bytes past the end (416)."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``[start, start + length)`` of a file of ``size`` bytes."""

    start: int
    length: int
    size: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.start + self.length - 1}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range a ``Range`` header asks of a ``size``-byte file, or None to serve
    the whole file (no header, several ranges, or a header this does not understand).

    Raises :class:`RangeNotSatisfiable` when the range holds no byte of the file.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        length = min(suffix, size)
        return ByteRange(start=size - length, length=length, size=size)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid, not unsatisfiable: RFC 9110 says ignore it
    if start >= size:
        raise RangeNotSatisfiable(header)
    return ByteRange(start=start, length=min(end, size - 1) - start + 1, size=size)


def is_inline(content_type: str, inline_types: Sequence[str]) -> bool:
    """Whether a file of ``content_type`` may be shown by the browser rather than saved:
    only types listed (``image/png``) or whose family is (``image/*``)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    family = media_type.split("/", 1)[0] + "/*"
    return any(allowed.lower() in (media_type, family) for allowed in inline_types)


def content_disposition(filename: str, *, inline: bool) -> str:
    """The ``Content-Disposition`` value serving ``filename`` inline or as an attachment."""
    kind = "inline" if inline else "attachment"
    name = filename.replace("\r", "").replace("\n", "") or "file"
    fallback = _ASCII_UNSAFE.sub("_", name)[:_MAX_FALLBACK]
    encoded = quote(name, safe=_ATTR_SAFE)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
