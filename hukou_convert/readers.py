"""Reading exported tables, streaming: CSV (UTF-8 with or without BOM, GBK, GB18030) and .xlsx.

A file is checked in full before anything is loaded from it (encoding, NUL bytes, format), so that a
file that cannot be read loads nothing. Each data row comes with its line number and the original text
as read, for the reject file.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, cast

from .errors import InputFileError
from .progress import Progress

Cell = str | int | float | date | datetime | bool | None

_CHUNK = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"
_ENCODING_NAMES = {
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "utf-8-sig": "utf-8",
    "gbk": "gbk",
    "cp936": "gbk",
    "gb2312": "gbk",
    "gb18030": "gb18030",
}


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line (CSV: first physical line of the record; xlsx: row number)
    cells: list[Cell]
    original: str  # the record as read


@dataclass
class TableFile:
    path: Path
    kind: str  # "csv" | "xlsx"
    encoding: str | None
    sha256: str
    header: list[str]
    header_line: int
    size: int
    delimiter: str = ","

    def rows(self, progress: Progress) -> Iterator[Row]:
        if self.kind == "xlsx":
            yield from _xlsx_rows(self, progress)
        else:
            yield from _csv_rows(self, progress)


def open_table(path: Path, encoding: str | None = None) -> TableFile:
    """Check the whole file and read its header; raise InputFileError if it cannot be read."""
    name = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputFileError(name, "file not found") from None
    except OSError as exc:
        raise InputFileError(name, f"cannot read: {exc.strerror}") from None
    if path.is_dir():
        raise InputFileError(name, "is a directory, not a file")
    if size == 0:
        raise InputFileError(name, "the file is empty (0 bytes): nothing to load")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputFileError(name, f"cannot read: {exc.strerror}") from None
    is_xlsx_name = path.suffix.lower() in (".xlsx", ".xlsm")
    if magic == _ZIP_MAGIC:
        if not is_xlsx_name and path.suffix.lower() != "":
            raise InputFileError(
                name, f"this is a ZIP/xlsx file named {path.suffix}: rename it to .xlsx"
            )
        return _open_xlsx(path, size)
    if is_xlsx_name:
        raise InputFileError(name, "not a readable .xlsx workbook (not a ZIP container)")
    if path.suffix.lower() == ".xls":
        raise InputFileError(name, "old binary .xls is not supported: save it as .xlsx or CSV")
    return _open_csv(path, size, encoding)


def _open_csv(path: Path, size: int, forced: str | None) -> TableFile:
    name = str(path)
    if forced is not None:
        codec = _ENCODING_NAMES.get(forced.lower().replace("_", "-"))
        if codec is None:
            raise InputFileError(name, f"unsupported --encoding {forced!r} (utf-8, gbk, gb18030)")
        candidates = [codec]
    else:
        # GBK before GB18030 only to name the encoding precisely: GB18030 reads every GBK file.
        candidates = ["utf-8", "gbk", "gb18030"]
    failures: list[tuple[str, int | None]] = []
    chosen: str | None = None
    digest = ""
    for codec in candidates:
        reason, line, digest = _scan(path, codec)
        if reason is None:
            chosen = codec
            break
        if reason == "NUL":
            raise InputFileError(name, "contains NUL bytes: a binary file, not a CSV export", line)
        failures.append((f"{codec}: {reason} at line {line}", line))
    if chosen is None:
        raise InputFileError(
            name,
            "cannot be decoded as "
            + " or ".join(candidates)
            + f" ({'; '.join(f for f, _ in failures)}); nothing was loaded"
            + ("" if forced else " (use --encoding to force one)"),
            failures[0][1],
        )
    text_encoding = "utf-8-sig" if chosen == "utf-8" else chosen
    with path.open("r", encoding=text_encoding, newline="") as fh:
        first = fh.readline()
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    try:
        header = next(csv.reader([first], delimiter=delimiter))
    except (csv.Error, StopIteration):
        raise InputFileError(name, "the header line cannot be parsed", 1) from None
    return TableFile(path, "csv", chosen, digest, [h.strip() for h in header], 1, size, delimiter)


def _scan(path: Path, codec: str) -> tuple[str | None, int | None, str]:
    """Decode the whole file strictly: (failure reason, its line, sha256 of the file)."""
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    sha = hashlib.sha256()
    line = 1
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            nul = chunk.find(b"\0")
            if nul >= 0:
                return "NUL", line + chunk.count(b"\n", 0, nul), ""
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return "invalid byte sequence", line + chunk.count(b"\n", 0, max(exc.start, 0)), ""
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "truncated multibyte character at the end of the file", line, ""
    return None, None, sha.hexdigest()


class _LineWindow:
    """Feeds csv.reader the file's lines a block at a time (no Python call per line) and keeps the
    lines of the record being read, for its original text."""

    _BLOCK = 1 << 20  # characters per block, roughly

    def __init__(self, fh: io.TextIOBase, advance: Callable[[int], None]) -> None:
        self._fh = fh
        self._advance = advance
        self.lines: list[str] = []
        self.base = 1  # line number of lines[0]
        self.keep_from = 1  # first line of the record being read: kept across blocks
        self._position = 0

    def _blocks(self) -> Iterator[list[str]]:
        while True:
            block = self._fh.readlines(self._BLOCK)
            if not block:
                return
            drop = self.keep_from - self.base
            if drop > 0:
                del self.lines[:drop]
                self.base += drop
            self.lines.extend(block)
            raw = getattr(self._fh, "buffer", None)
            if raw is not None:  # bytes read so far: the bar's total is the file's size in bytes
                position = raw.tell()
                self._advance(position - self._position)
                self._position = position
            else:
                self._advance(sum(map(len, block)))
            yield block

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._blocks())

    def text(self, first: int, last: int) -> str:
        """The original text of lines first..last (1-based, inclusive)."""
        return "".join(self.lines[first - self.base : last - self.base + 1]).rstrip("\r\n")


def _csv_rows(table: TableFile, progress: Progress) -> Iterator[Row]:
    encoding = "utf-8-sig" if table.encoding == "utf-8" else table.encoding
    with (
        table.path.open("r", encoding=encoding, newline="") as fh,
        progress("读取 " + table.path.name, table.size, "B") as advance,
    ):
        window = _LineWindow(fh, advance)
        reader = csv.reader(window, delimiter=table.delimiter, strict=True)
        first = True
        while True:
            start_line = reader.line_num + 1
            window.keep_from = start_line
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                original = window.text(start_line, reader.line_num)
                yield Row(start_line, [_BadRecord(str(exc))], original)
                continue
            if first:
                first = False  # the header, already read by open_table
                continue
            if not cells or (not cells[0].strip() and all(c.strip() == "" for c in cells)):
                continue  # blank line
            yield Row(
                start_line, cast("list[Cell]", cells), window.text(start_line, reader.line_num)
            )


class _BadRecord(str):
    """Marks a CSV record the parser could not split (unbalanced quotes…)."""

    __slots__ = ()


def is_bad_record(cells: list[Cell]) -> str | None:
    if len(cells) == 1 and isinstance(cells[0], _BadRecord):
        return str(cells[0])
    return None


def _open_xlsx(path: Path, size: int) -> TableFile:
    import openpyxl  # local: openpyxl's import cost is paid only for workbooks

    name = str(path)
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise InputFileError(
            name, f"not a readable .xlsx workbook ({type(exc).__name__})"
        ) from None
    try:
        ws = wb.worksheets[0]
        for index, values in enumerate(ws.iter_rows(values_only=True), start=1):
            if values and any(v not in (None, "") for v in values):
                header = ["" if v is None else str(v).strip() for v in values]
                return TableFile(path, "xlsx", None, sha.hexdigest(), header, index, size)
    except Exception as exc:  # openpyxl raises many kinds on damaged parts
        raise InputFileError(
            name, f"not a readable .xlsx workbook ({type(exc).__name__})"
        ) from None
    finally:
        wb.close()
    raise InputFileError(name, "the first sheet is empty: no header row")


def _xlsx_rows(table: TableFile, progress: Progress) -> Iterator[Row]:
    import openpyxl

    wb = openpyxl.load_workbook(table.path, read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        total = ws.max_row if isinstance(ws.max_row, int) else None
        with progress("读取 " + table.path.name, total, "行") as advance:
            for index, values in enumerate(ws.iter_rows(values_only=True), start=1):
                advance(1)
                if index <= table.header_line:
                    continue
                cells: list[Cell] = [_xlsx_value(v) for v in values]
                if all(c is None or (isinstance(c, str) and not c.strip()) for c in cells):
                    continue
                yield Row(index, cells, _render_original(cells))
    finally:
        wb.close()


def _xlsx_value(value: Any) -> Cell:
    if value is None or isinstance(value, str | int | float | date | datetime | bool):
        return value
    return str(value)


def _render_original(cells: list[Cell]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(["" if c is None else str(c) for c in cells])
    return out.getvalue()
