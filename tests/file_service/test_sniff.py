"""Sniffing a file's type from its bytes: real files made here, each declared truthfully
and then disguised; a disguise ends with the real type or application/octet-stream."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
from PIL import Image

from file_service.models import OCTET_STREAM
from file_service.sniff import HEAD_BYTES, allowed, sniff


def _image(format_name: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(buffer, format_name)
    return buffer.getvalue()


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return buffer.getvalue()


def _elf() -> bytes:
    # The ELF identification and header of a 64-bit little-endian x86-64 executable.
    ident = b"\x7fELF\x02\x01\x01" + b"\x00" * 9
    return ident + struct.pack("<HHI", 2, 0x3E, 1) + b"\x00" * 48


HTML_PAGE = b"<!DOCTYPE html>\n<html><body><script>alert(document.cookie)</script></body></html>"
SVG_IMAGE = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
SVG_WITH_PROLOG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- Created with Inkscape -->\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
)
TEXT = "Meeting notes — Tuesday\n\t* ship the file service\r\n".encode()

# (bytes, what they really are, the type a truthful client declares, a file name)
REAL_FILES = {
    "png": (_image("PNG"), "image/png", "image/png", "a.png"),
    "jpeg": (_image("JPEG"), "image/jpeg", "image/jpeg", "a.jpg"),
    "gif": (_image("GIF"), "image/gif", "image/gif", "a.gif"),
    "webp": (_image("WEBP"), "image/webp", "image/webp", "a.webp"),
    "pdf": (
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        "application/pdf",
        "",
        "a.pdf",
    ),
    "zip": (_zip(), "application/zip", "application/zip", "a.zip"),
    "elf": (_elf(), "application/x-executable", "application/octet-stream", "a"),
    "html": (HTML_PAGE, "text/html", "text/html", "a.html"),
    "svg": (SVG_IMAGE, "image/svg+xml", "image/svg+xml", "a.svg"),
    "svg with prolog": (SVG_WITH_PROLOG, "image/svg+xml", "image/svg+xml", "a.svg"),
    "text": (TEXT, "text/plain", "text/plain", "notes.txt"),
}


@pytest.mark.parametrize("name", REAL_FILES)
def test_a_truthfully_declared_file_gets_its_type(name: str) -> None:
    data, real, declared, filename = REAL_FILES[name]
    assert sniff(data, declared, filename) == real


@pytest.mark.parametrize("name", [name for name in REAL_FILES if name != "text"])
@pytest.mark.parametrize(
    ("lie", "filename"),
    [("image/png", "cat.png"), ("text/html", "page.html"), ("text/plain", "notes.txt")],
)
def test_a_disguised_file_gets_its_real_type_not_the_lie(
    name: str, lie: str, filename: str
) -> None:
    data, real, _, _ = REAL_FILES[name]
    assert sniff(data, lie, filename) == real


def test_text_declared_as_an_image_or_html_is_octet_stream() -> None:
    assert sniff(TEXT, "image/png", "notes.png") == OCTET_STREAM
    assert sniff(TEXT, "text/html", "notes.html") == OCTET_STREAM
    assert sniff(TEXT, "application/javascript", "notes.js") == OCTET_STREAM


def test_unrecognised_binary_declared_as_text_is_octet_stream() -> None:
    assert sniff(bytes(range(256)) * 4, "text/plain", "notes.txt") == OCTET_STREAM
    assert sniff(b"plain\x00text", "text/csv", "a.csv") == OCTET_STREAM
    assert sniff(b"\xff\xfe\xfa not utf-8", "text/plain", "a.txt") == OCTET_STREAM


@pytest.mark.parametrize(
    "markup",
    [
        b"   \n\t<html><p>hi",
        b"\xef\xbb\xbf<!doctype html><title>x</title>",
        "\ufeff<html>".encode("utf-16-le"),
        b"<SCRIPT>alert(1)</SCRIPT>",
        b"<!-- a comment --><img src=x onerror=alert(1)>",
        b"<a href='javascript:alert(1)'>click</a>",
        b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><script/></html>',
    ],
)
def test_html_is_typed_html_however_it_is_declared(markup: bytes) -> None:
    assert sniff(markup, "text/plain", "notes.txt") == "text/html"
    assert sniff(markup, "", "") == "text/html"


@pytest.mark.parametrize(
    "markup",
    [
        b"\n  <svg><script>alert(1)</script></svg>",
        b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd">\n<svg/>',
        b"\xef\xbb\xbf<?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>",
    ],
)
def test_svg_is_typed_svg_however_it_is_declared(markup: bytes) -> None:
    assert sniff(markup, "image/png", "a.png") == "image/svg+xml"


def test_other_xml_is_typed_xml() -> None:
    assert sniff(b"<?xml version='1.0'?><note/>", "text/plain", "a.txt") == "application/xml"


def test_text_that_merely_mentions_tags_stays_text() -> None:
    text = b"Use <b> for bold and <svg> for drawings.\n"
    assert sniff(text, "text/plain", "notes.txt") == "text/plain"
    assert sniff(b"<bold> is not a tag of HTML", "text/plain", "a.txt") == "text/plain"


def test_an_undeclared_text_file_takes_its_type_from_a_safe_file_name() -> None:
    assert sniff(b"a,b\n1,2\n", "application/octet-stream", "table.csv") == "text/csv"
    assert sniff(b'{"a": 1}', "", "data.json") == "application/json"
    assert sniff(b"hello", "", "page.html") == OCTET_STREAM
    assert sniff(b"hello", "", "no-extension") == OCTET_STREAM


def test_declared_parameters_and_case_are_ignored() -> None:
    assert sniff(TEXT, "Text/Plain; charset=UTF-8", "notes.txt") == "text/plain"


def test_a_multibyte_character_cut_by_the_head_is_still_text() -> None:
    data = ("é" * HEAD_BYTES).encode()
    assert sniff(data[:HEAD_BYTES], "text/plain", "a.txt") == "text/plain"


def test_empty_bytes_are_octet_stream_unless_declared_as_safe_text() -> None:
    assert sniff(b"", "image/png", "a.png") == OCTET_STREAM
    assert sniff(b"", "text/plain", "a.txt") == "text/plain"


@pytest.mark.parametrize(
    ("content_type", "patterns", "expected"),
    [
        ("image/png", ["image/png"], True),
        ("image/png", ["image/*"], True),
        ("IMAGE/PNG", ["image/*"], True),
        ("text/plain; charset=utf-8", ["text/plain"], True),
        ("application/pdf", ["*/*"], True),
        ("image/svg+xml", ["image/png", "image/jpeg"], False),
        ("text/html", ["text/plain", "image/*"], False),
        ("image/png", [], False),
        ("imagex/png", ["image/*"], False),
    ],
)
def test_allowlists_match_exact_types_families_and_everything(
    content_type: str, patterns: list[str], expected: bool
) -> None:
    assert allowed(content_type, patterns) is expected
