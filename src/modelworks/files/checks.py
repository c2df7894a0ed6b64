"""What an upload must be before it is stored: not empty, and what its name says it is (a `.pdf` that is a PDF,
a `.json` that parses, text that is UTF-8). Each refusal is a 400 naming `file`, with the reason."""

from __future__ import annotations

import codecs
import json
import zipfile
from pathlib import Path

from modelworks.errors import InvalidRequest

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm", ".csv", ".tsv", ".xml", ".py", ".js", ".ts",
                 ".java", ".c", ".cpp", ".h", ".cs", ".go", ".rb", ".php", ".sh", ".css", ".tex", ".rst", ".yaml",
                 ".yml", ".sql"}
OFFICE = {".docx": "word/document.xml", ".pptx": "ppt/presentation.xml", ".xlsx": "xl/workbook.xml"}
READ = 1 << 20


def suffix(filename: str) -> str:
    return Path(filename).suffix.lower()


def check_upload(path: Path, filename: str, size: int, purpose: str) -> None:
    """Raise InvalidRequest (param `file`) where the file is not what its name and purpose need."""
    if size == 0:
        raise InvalidRequest("The file is empty.", param="file", code="empty_file")
    ext = suffix(filename)
    if purpose == "batch" and ext != ".jsonl":
        raise InvalidRequest("A file for the Batch API must be JSON Lines, named *.jsonl.", param="file",
                             code="invalid_file_format")
    with path.open("rb") as f:
        head = f.read(8)
    if ext == ".pdf":
        if not head.startswith(b"%PDF-"):
            raise InvalidRequest(f"'{filename}' is not a PDF document (it does not start with %PDF-).",
                                 param="file", code="invalid_file_format")
    elif ext in OFFICE:
        _check_office(path, filename, OFFICE[ext])
    elif ext == ".json":
        text = _utf8(path, filename)
        try:
            json.loads(text)
        except RecursionError:
            raise InvalidRequest(f"'{filename}' is JSON nested too deeply.", param="file",
                                 code="invalid_file_format") from None
        except ValueError as exc:
            raise InvalidRequest(f"'{filename}' is not valid JSON: {exc}.", param="file",
                                 code="invalid_file_format") from None
    elif ext == ".jsonl":
        _check_jsonl(path, filename)
    elif ext in TEXT_SUFFIXES:
        _utf8(path, filename)


def _check_office(path: Path, filename: str, member: str) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        raise InvalidRequest(f"'{filename}' is not an Office Open XML document (not a ZIP archive).",
                             param="file", code="invalid_file_format") from None
    if member not in names:
        raise InvalidRequest(f"'{filename}' is a ZIP archive without {member}: not the document its name says.",
                             param="file", code="invalid_file_format")


def _utf8(path: Path, filename: str, keep: bool = True) -> str:
    """The file as text; refused unless UTF-8 (a byte order mark is allowed)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    parts: list[str] = []
    offset = 0
    with path.open("rb") as f:
        while chunk := f.read(READ):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise InvalidRequest(f"'{filename}' is not UTF-8 text (invalid byte at offset {offset + exc.start}).",
                                     param="file", code="invalid_file_format") from None
            offset += len(chunk)
            if keep:
                parts.append(text)
        try:
            parts.append(decoder.decode(b"", final=True))
        except UnicodeDecodeError:
            raise InvalidRequest(f"'{filename}' is not UTF-8 text (it ends inside a character).", param="file",
                                 code="invalid_file_format") from None
    return "".join(parts)


def _check_jsonl(path: Path, filename: str) -> None:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except RecursionError:
                raise InvalidRequest(f"'{filename}' line {number} is JSON nested too deeply.", param="file",
                                     code="invalid_file_format") from None
            except (UnicodeDecodeError, ValueError) as exc:
                raise InvalidRequest(f"'{filename}' line {number} is not valid JSON: {exc}.", param="file",
                                     code="invalid_file_format") from None
            if not isinstance(value, dict):
                raise InvalidRequest(f"'{filename}' line {number} is not a JSON object.", param="file",
                                     code="invalid_file_format")
