"""Text out of a stored file, by its type: plain text and Markdown as they are, HTML without its markup,
JSON as indented text, CSV as it is, PDF page by page (pypdf), Word documents paragraph by paragraph.

Each extraction is bounded (a ZIP member or PDF that would expand past `MAX_TEXT` characters is refused), and
failures say why: `unsupported_file` for a type with no extractor, `invalid_file` for one that does not parse."""

from __future__ import annotations

import io
import json
import zipfile
from html.parser import HTMLParser
from xml.etree import ElementTree

from modelworks.files.checks import TEXT_SUFFIXES, suffix

MAX_TEXT = 50_000_000  # characters of text from one file
MAX_XML = 64 * 1024 * 1024  # bytes of word/document.xml, uncompressed
EXTRACTABLE = TEXT_SUFFIXES | {".json", ".jsonl", ".pdf", ".docx"}


class ExtractionError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # unsupported_file or invalid_file
        self.message = message


def extract_text(filename: str, data: bytes) -> str:
    ext = suffix(filename)
    if ext not in EXTRACTABLE:
        raise ExtractionError("unsupported_file", f"Files of type '{ext or filename}' cannot be searched; supported: "
                                                  f"{', '.join(sorted(EXTRACTABLE))}.")
    if ext == ".pdf":
        text = _pdf(data)
    elif ext == ".docx":
        text = _docx(data)
    else:
        text = _decode(data)
        if ext in (".html", ".htm"):
            text = _html(text)
        elif ext == ".json":
            try:
                text = json.dumps(json.loads(text), indent=1, ensure_ascii=False)
            except RecursionError:
                raise ExtractionError("invalid_file", "The JSON is nested too deeply.") from None
            except ValueError as exc:
                raise ExtractionError("invalid_file", f"The file is not valid JSON: {exc}.") from None
    if len(text) > MAX_TEXT:
        raise ExtractionError("invalid_file", f"The file's text is over {MAX_TEXT} characters.")
    return text


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ExtractionError("invalid_file", "The file is not UTF-8 text.") from None


class _Text(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "head", "svg"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre",
             "blockquote", "table", "ul", "ol", "dd", "dt", "header", "footer", "title", "td", "th"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data) -> None:
        if not self.skipping:
            self.parts.append(data)


def _html(text: str) -> str:
    parser = _Text()
    parser.feed(text)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractionError("invalid_file", "The PDF is encrypted.")
        pages, size = [], 0
        for page in reader.pages:
            text = page.extract_text() or ""
            size += len(text)
            if size > MAX_TEXT:
                raise ExtractionError("invalid_file", f"The file's text is over {MAX_TEXT} characters.")
            pages.append(text.strip())
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise ExtractionError("invalid_file", f"The PDF could not be read: {type(exc).__name__}.") from None
    text = "\n\n".join(p for p in pages if p)
    if not text:
        raise ExtractionError("invalid_file", "The PDF has no text (a scanned document needs OCR first).")
    return text


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _docx(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            info = z.getinfo("word/document.xml")
            parts, size = [], 0
            with z.open(info) as member:  # counted as it inflates: a ZIP's declared sizes can lie
                while block := member.read(1 << 20):
                    size += len(block)
                    if size > MAX_XML:
                        raise ExtractionError("invalid_file", "The document is too large once uncompressed.")
                    parts.append(block)
            root = ElementTree.fromstring(b"".join(parts))
    except ExtractionError:
        raise
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, ValueError, OSError):
        raise ExtractionError("invalid_file", "The Word document could not be read.") from None
    paragraphs = []
    for p in root.iter(f"{_W}p"):
        words = []
        for node in p.iter():
            if node.tag == f"{_W}t" and node.text:
                words.append(node.text)
            elif node.tag == f"{_W}tab":
                words.append("\t")
            elif node.tag in (f"{_W}br", f"{_W}cr"):
                words.append("\n")
        if words:
            paragraphs.append("".join(words))
    return "\n".join(paragraphs)
