"""The media type of a file, judged from its bytes rather than from what the client said.

A client's declared type is a claim, and a hostile one can be a lie: an HTML page or an SVG
with script declared as ``image/png`` would run in the browser of whoever opens it from
Keel's origin. :func:`sniff` therefore decides from the first bytes of the file
(:data:`HEAD_BYTES` of them), in this order:

1. A signature that ``filetype`` recognises (PNG, JPEG, GIF, WebP, PDF, ZIP, ELF, …): that
   type, whatever was declared.
2. Markup a browser would render: HTML (the WHATWG MIME-sniffing patterns such as
   ``<!doctype html``, ``<html``, ``<script``, ``<!--``) is ``text/html``; SVG (``<svg``,
   or ``<?xml``/``<!doctype svg`` followed by ``<svg``) is ``image/svg+xml``; other XML is
   ``application/xml``. Leading whitespace and a UTF-8 or UTF-16 byte-order mark are
   skipped, as browsers do. The caller refuses these or serves them only as attachments.
3. Otherwise the declared type — or, when the declared type says nothing
   (empty or ``application/octet-stream``), the type the file name's extension suggests —
   but only if it is one of the harmless textual types of :data:`SAFE_TEXT_TYPES` and the
   bytes are text (UTF-8, no NUL or other control bytes than tab, newlines, form feed and
   escape).
4. Otherwise ``application/octet-stream``.

So a lie never survives: a disguised file ends up with its real type or with
``application/octet-stream``. The result is a bare, lower-case media type without
parameters (``text/plain``, not ``text/plain; charset=utf-8``).

:func:`allowed` matches a type against an allowlist of exact types, ``family/*`` and
``*/*``.
"""

from __future__ import annotations

import codecs
import mimetypes
import re
from collections.abc import Sequence
from typing import Final

import filetype

from file_service.models import OCTET_STREAM

#: How many leading bytes :func:`sniff` looks at; callers pass at most this many.
HEAD_BYTES: Final = 8 * 1024
HTML: Final = "text/html"
SVG: Final = "image/svg+xml"
XML: Final = "application/xml"
#: Declared types kept when no signature is found and the bytes are text: none of them is
#: rendered as active content by a browser.
SAFE_TEXT_TYPES: Final = frozenset(
    {
        "text/plain",
        "text/csv",
        "text/tab-separated-values",
        "text/markdown",
        "text/calendar",
        "text/vcard",
        "application/json",
    }
)

# The WHATWG MIME Sniffing Standard's HTML patterns (section 7.1), each of which must be
# followed by a space or ">" — what makes a browser render text as HTML.
_HTML_TAGS: Final = (
    "<!doctype html",
    "<html",
    "<head",
    "<script",
    "<iframe",
    "<h1",
    "<div",
    "<font",
    "<table",
    "<a",
    "<style",
    "<title",
    "<b",
    "<body",
    "<br",
    "<p",
    "<!--",
)
_TAG_END: Final = (" ", ">", "\t", "\n", "\x0c", "\r")
_SVG_ROOT: Final = re.compile(r"<svg[\s>/]")
_XHTML_ROOT: Final = re.compile(r"<html[\s>/]")
_BOMS: Final = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Control bytes that plain text may contain: tab, line feed, form feed, carriage return,
# escape (terminal colours in logs).
_TEXT_CONTROLS: Final = frozenset(b"\t\n\x0c\r\x1b")
_CONTROL_BYTES: Final = frozenset(range(0x20)) - _TEXT_CONTROLS | {0x7F}


def sniff(head: bytes, declared: str, filename: str) -> str:
    """The media type of a file whose first bytes are ``head`` (up to :data:`HEAD_BYTES`;
    a longer ``head`` is cut), declared by its uploader as ``declared`` under the name
    ``filename``. See the module's docstring for the rules; the result is never a declared
    type that the bytes contradict."""
    head = head[:HEAD_BYTES]
    detected = filetype.guess_mime(head)
    if isinstance(detected, str):
        return detected
    markup = _markup_type(head)
    if markup is not None:
        return markup
    claimed = _claimed_type(declared, filename)
    if claimed in SAFE_TEXT_TYPES and _is_text(head):
        return claimed
    return OCTET_STREAM


def allowed(content_type: str, patterns: Sequence[str]) -> bool:
    """Whether ``content_type`` matches one of ``patterns``: an exact type
    (``image/png``), a family (``image/*``) or anything (``*/*``). Case and parameters
    (``; charset=…``) are ignored; no patterns allow nothing."""
    media_type = _bare(content_type)
    family = media_type.partition("/")[0]
    for pattern in patterns:
        wanted = _bare(pattern)
        if wanted in ("*/*", media_type) or wanted == f"{family}/*":
            return True
    return False


def _markup_type(head: bytes) -> str | None:
    """``text/html``, ``image/svg+xml`` or ``application/xml`` when ``head`` starts like
    such a document, else None."""
    text = _leading_text(head)
    if text is None:
        return None
    start = text.lstrip(" \t\n\x0c\r").lower()
    if start.startswith("<?xml") or start.startswith("<!doctype svg"):
        if _SVG_ROOT.search(start):
            return SVG
        return HTML if _XHTML_ROOT.search(start) else XML
    if _SVG_ROOT.match(start):
        return SVG
    for tag in _HTML_TAGS:
        if start.startswith(tag) and start[len(tag) : len(tag) + 1] in _TAG_END:
            return HTML
    return None


def _leading_text(head: bytes) -> str | None:
    """``head`` decoded as a browser would (its byte-order mark, else UTF-8), dropping a
    character cut at the end; None when it is not text in that encoding."""
    encoding = "utf-8"
    for bom, bom_encoding in _BOMS:
        if head.startswith(bom):
            head, encoding = head[len(bom) :], bom_encoding
            break
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        return decoder.decode(head, final=False)
    except UnicodeDecodeError:
        return None


def _is_text(head: bytes) -> bool:
    """Whether ``head`` reads as UTF-8 text without control bytes binary files are full of."""
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :]
    if any(byte in _CONTROL_BYTES for byte in head):
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _claimed_type(declared: str, filename: str) -> str:
    """The declared type, or the file name's when the declared one says nothing."""
    media_type = _bare(declared)
    if media_type in ("", OCTET_STREAM):
        guessed, _ = mimetypes.guess_type(filename, strict=False)
        media_type = _bare(guessed or "")
    return media_type


def _bare(content_type: str) -> str:
    """``content_type`` without parameters, stripped and lower-case."""
    return content_type.partition(";")[0].strip().lower()
