"""Reading exported tables, streaming: CSV (UTF-8 with or without BOM, GBK, GB18030) and .xlsx.

A file is checked in full before anything is loaded from it (encoding, NUL bytes, format), so that a
file that cannot be read loads nothing; or, a large CSV file that an import loads in one
transaction, as it is loaded (``open_table(whole=False)``, :class:`ByteProof`): the transaction
rolls back if any byte fails. Each data row comes with its line number and the original text
as read, for the reject file.

An xlsx is read by openpyxl in read-only mode, which gives a formula's cached value or its text but
not both, and no merged ranges. A light streaming pass over the sheet's XML when it is opened finds
whether it holds formulas and which merged ranges reach below the header (they are written after the
rows); if it holds formulas, a second parse of the XML runs in step with openpyxl's rows and tells
each row which of its cells are formulas and whether the file holds their cached value.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import re
import threading
import zipfile
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, cast
from xml.etree import ElementTree

from .errors import InputFileError, UnprovenBytes
from .progress import Progress

Cell = str | int | float | date | datetime | bool | None
# (0-based column, whether the file holds the formula's cached value)
FormulaCell = tuple[int, bool]

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


class Row:
    """A record of the file: its 1-based line (CSV: the first physical line of the record; xlsx:
    the row number), its cells, and (xlsx) its formula cells, whose cells hold cached values.

    ``original`` is the record as read. A CSV record's is taken from the file's lines only when
    asked for (a reject): while the record is the one being read, as the import does at once."""

    __slots__ = ("_last", "_original", "_window", "cells", "formulas", "line")

    def __init__(
        self,
        line: int,
        cells: list[Cell],
        original: str | None = None,
        formulas: tuple[FormulaCell, ...] = (),
        window: _LineWindow | None = None,
        last: int = 0,
    ) -> None:
        self.line = line
        self.cells = cells
        self.formulas = formulas
        self._original = original
        self._window = window
        self._last = last

    @property
    def original(self) -> str:
        if self._original is None:
            assert self._window is not None, "a row without its original text"
            self._original = self._window.text(self.line, self._last)
        return self._original


@dataclass(frozen=True)
class MergedRange:
    """A merged range of an xlsx sheet reaching below the header. Only its first (top-left) cell
    holds a value: the others are empty in the file."""

    ref: str  # e.g. "E2:E4"
    first: str  # its top-left cell, e.g. "E2"
    min_col: int  # 0-based
    min_row: int  # spreadsheet row numbers
    max_col: int
    max_row: int

    def hides(self, column: int, line: int) -> bool:
        """Whether the cell (0-based column, row number) is under it and not its first cell."""
        return (
            self.min_col <= column <= self.max_col
            and self.min_row <= line <= self.max_row
            and (column, line) != (self.min_col, self.min_row)
        )


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
    sheet_part: str | None = None  # xlsx: the first sheet's part in the ZIP
    has_formulas: bool = False  # xlsx: the sheet holds at least one formula
    merged: tuple[MergedRange, ...] = ()  # xlsx: merged ranges below the header, the first few
    merged_unlisted: int = 0  # xlsx: merged ranges below the header beyond those kept
    # CSV: every byte decoded and the SHA-256 taken; False: only its first lines were (``whole=False``)
    checked: bool = True

    def rows(self, progress: Progress) -> Iterator[Row]:
        if self.kind == "xlsx":
            yield from _xlsx_rows(self, progress)
        else:
            yield from _csv_rows(self, progress)


def open_table(path: Path, encoding: str | None = None, *, whole: bool = True) -> TableFile:
    """Check the whole file and read its header; raise InputFileError if it cannot be read.

    ``whole=False``: a CSV file larger than a megabyte has only its first lines decoded, to choose
    its encoding (the first that reads them, as the whole file's check would choose but for a
    byte further on), and is not ``checked``: its SHA-256 is empty. Whoever loads it must prove
    the rest, decoding every line strictly and taking the rest from :class:`ByteProof`, and load
    nothing if that fails."""
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
    return _open_csv(path, size, encoding, whole)


def _open_csv(path: Path, size: int, forced: str | None, whole: bool = True) -> TableFile:
    name = str(path)
    if forced is not None:
        codec = _ENCODING_NAMES.get(forced.lower().replace("_", "-"))
        if codec is None:
            raise InputFileError(name, f"unsupported --encoding {forced!r} (utf-8, gbk, gb18030)")
        candidates = [codec]
    else:
        # GBK before GB18030 only to name the encoding precisely: GB18030 reads every GBK file.
        candidates = ["utf-8", "gbk", "gb18030"]
    head = None if whole else _head(path)
    failures: list[tuple[str, int | None]] = []
    chosen: str | None = None
    digest = ""
    for codec in candidates:
        reason, line, digest = _scan(path, codec, head)
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
    # read from the head when there is one: the bytes after it are not known to decode
    raw = io.BufferedReader(io.BytesIO(head)) if head is not None else path.open("rb")
    with io.TextIOWrapper(raw, encoding=text_encoding, newline="") as fh:
        first = fh.readline()
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    try:
        header = next(csv.reader([first], delimiter=delimiter))
    except (csv.Error, StopIteration):
        raise InputFileError(name, "the header line cannot be parsed", 1) from None
    header = [h.strip() for h in header]
    return TableFile(path, "csv", chosen, digest, header, 1, size, delimiter, checked=head is None)


def _head(path: Path) -> bytes | None:
    """The file's first lines, about a megabyte of them; None if that is the whole file."""
    with path.open("rb") as fh:
        data = fh.read(_CHUNK + 1)
    if len(data) <= _CHUNK:
        return None
    end = data.rfind(b"\n", 0, _CHUNK) + 1  # a line break is never inside a character
    return data[:end] if end else None


def _one(data: bytes) -> Generator[bytes]:
    yield data


def _chunks(path: Path) -> Generator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def _scan(
    path: Path,
    codec: str | None,
    head: bytes | None = None,
    stop: threading.Event | None = None,
) -> tuple[str | None, int | None, str]:
    """Decode the whole file strictly, or only its ``head``: (failure reason, its line, sha256 of
    the file, or "" for a head). ``codec`` None: nothing decoded, the NUL bytes looked for and the
    hash taken (:class:`ByteProof`), unless ``stop`` is set first (reason "stopped")."""
    decoder = None if codec is None else codecs.getincrementaldecoder(codec)(errors="strict")
    sha = hashlib.sha256()
    line = 1
    with closing(_chunks(path) if head is None else _one(head)) as chunks:
        for chunk in chunks:
            if stop is not None and stop.is_set():
                return "stopped", None, ""
            sha.update(chunk)
            nul = chunk.find(b"\0")
            if nul >= 0:
                return "NUL", line + chunk.count(b"\n", 0, nul), ""
            try:
                if decoder is not None:
                    decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return "invalid byte sequence", line + chunk.count(b"\n", 0, max(exc.start, 0)), ""
            line += chunk.count(b"\n")
        try:
            if decoder is not None:
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "truncated multibyte character at the end of the file", line, ""
    return None, None, sha.hexdigest() if head is None else ""


class ByteProof:
    """The SHA-256 of a file and the line of its first NUL byte, if any, taken by a thread of its
    own while the file is loaded (hashing and reading release the interpreter): what
    ``open_table(whole=False)`` leaves to prove besides the decoding."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self._found: tuple[str | None, int | None, str] = ("stopped", None, "")
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="hukou-byte-proof", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self._found = _scan(self._path, None, stop=self._stop)
        except BaseException as exc:  # given to whoever asks for the result
            self._error = exc

    def stop(self) -> None:
        self._stop.set()

    def sha256(self) -> str:
        """The file's SHA-256, once the thread has read it all; UnprovenBytes if it holds a NUL
        byte (the line of the first)."""
        self._thread.join()
        if isinstance(self._error, OSError):
            raise InputFileError(str(self._path), f"cannot read: {self._error.strerror}")
        if self._error is not None:
            raise self._error
        reason, line, sha = self._found
        if reason == "NUL":
            raise UnprovenBytes(str(self._path), "contains NUL bytes; nothing was imported", line)
        if reason is not None:
            raise AssertionError("the proof was stopped before the file was read")
        return sha


class _LineWindow:
    """Feeds csv.reader the file's lines a block at a time (no Python call per line) and keeps the
    lines of the record being read, for its original text."""

    _BLOCK = 1 << 20  # characters per block, roughly

    def __init__(
        self, fh: io.TextIOBase, advance: Callable[[int], None], first_line: int = 1
    ) -> None:
        self._fh = fh
        self._advance = advance
        self.lines: list[str] = []
        self.base = first_line  # line number of lines[0]
        self.keep_from = first_line  # first line of the record being read: kept across blocks
        self._position = 0
        self.exhausted = False  # every line handed over: the reader asked past the last

    def _blocks(self) -> Iterator[list[str]]:
        while True:
            block = self._fh.readlines(self._BLOCK)
            if not block:
                self.exhausted = True
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
        yield from csv_records(fh, table.delimiter, advance, after_header=True)


class RecordCutOff(Exception):
    """A part of a CSV file ended inside a record (a quoted field running on past it): the part
    was cut at the wrong place. ``line`` is the line the record starts on."""

    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def csv_records(
    fh: io.TextIOBase,
    delimiter: str,
    advance: Callable[[int], None],
    *,
    first_line: int = 1,
    after_header: bool = False,
    to_the_end: bool = True,
    take: Callable[[list[str], int], bool] | None = None,
) -> Iterator[Row]:
    """The records of a CSV text opened with ``newline=""``, which holds the file from the start
    of line ``first_line``: from its start (``after_header``: the header skipped) or from a record
    boundary. ``to_the_end=False``: the text is a part that stops before the file does, and a record
    it leaves unfinished raises RecordCutOff instead of being read as one cut short.

    ``take(cells, line)``, if given, is offered each record that is not blank first: a record it
    takes (True) is not yielded. The import's fast path: no Row made for a record that needs none."""
    window = _LineWindow(fh, advance, first_line)
    reader = csv.reader(window, delimiter=delimiter, strict=True)
    before = first_line - 1  # lines of the file before the text
    first = after_header
    while True:
        start_line = before + reader.line_num + 1
        window.keep_from = start_line
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if window.exhausted and not to_the_end:
                raise RecordCutOff(start_line) from None
            original = window.text(start_line, before + reader.line_num)
            yield Row(start_line, [_BadRecord(str(exc))], original)
            continue
        if first:
            first = False  # the header, already read by open_table
            continue
        if is_blank_record(cells):
            continue
        if take is not None and take(cells, start_line):
            continue
        yield Row(
            start_line, cast("list[Cell]", cells), window=window, last=before + reader.line_num
        )


def is_blank_record(cells: list[str]) -> bool:
    """A blank line, or one of blank cells: skipped, neither loaded nor rejected."""
    return not cells or (not cells[0].strip() and all(c.strip() == "" for c in cells))


def line_record(line: str, delimiter: str) -> list[str]:
    """The cells of a record that is one line of the file, as :func:`csv_records` reads it."""
    try:
        return next(csv.reader([line], delimiter=delimiter, strict=True), [])
    except csv.Error as exc:
        return [_BadRecord(str(exc))]


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
        part = getattr(ws, "_worksheet_path", None)  # read-only sheets know their part
        if not isinstance(part, str):
            raise InputFileError(name, "cannot find the first sheet in the workbook")
        for index, values in enumerate(ws.iter_rows(values_only=True), start=1):
            if values and any(v not in (None, "") for v in values):
                header = ["" if v is None else str(v).strip() for v in values]
                table = TableFile(path, "xlsx", None, sha.hexdigest(), header, index, size)
                table.sheet_part = part
                _scan_sheet(table)
                return table
    except InputFileError:
        raise
    except Exception as exc:  # openpyxl raises many kinds on damaged parts
        raise InputFileError(
            name, f"not a readable .xlsx workbook ({type(exc).__name__})"
        ) from None
    finally:
        wb.close()
    raise InputFileError(name, "the first sheet is empty: no header row")


# A start tag can only begin at a "<" outside text, attribute values, comments and CDATA (where it is
# escaped), and Excel writes none of the latter in a sheet: a start tag f (a formula) or mergeCell
# found in the bytes is one. Any namespace prefix is allowed.
_SHEET_MARKS = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?(f|mergeCell)(?=[\s/>])([^>]*)")
_MERGE_REF = re.compile(rb"""\bref\s*=\s*["']([^"']*)["']""")
_MERGED_KEPT = 10_000  # merged ranges kept to name them; the rest are counted


def _scan_sheet(table: TableFile) -> None:
    """Whether the first sheet holds formulas, and its merged ranges reaching below the header:
    one streaming pass over its XML (decompressed a block at a time, never held whole)."""
    from openpyxl.utils.cell import get_column_letter, range_boundaries

    assert table.sheet_part is not None
    merged: list[MergedRange] = []
    unlisted = 0

    def marks(block: bytes, end: int) -> None:
        nonlocal unlisted
        for match in _SHEET_MARKS.finditer(block, 0, end):
            if match[1] == b"f":
                table.has_formulas = True
                continue
            ref = _MERGE_REF.search(match[2])
            if ref is None:
                continue
            text = ref[1].decode("ascii", "replace").replace("$", "").upper()
            try:
                min_col, min_row, max_col, max_row = range_boundaries(text)
            except (ValueError, TypeError):
                continue
            if min_col is None or min_row is None or max_col is None or max_row is None:
                continue  # whole rows or columns: not something Excel writes as a merge
            if max_row <= table.header_line or (min_col, min_row) == (max_col, max_row):
                continue  # above the data, or a single cell
            if len(merged) >= _MERGED_KEPT:
                unlisted += 1
                continue
            first = f"{get_column_letter(min_col)}{min_row}"
            merged.append(MergedRange(text, first, min_col - 1, min_row, max_col - 1, max_row))

    with zipfile.ZipFile(table.path) as archive, archive.open(table.sheet_part) as fh:
        tail = b""
        while chunk := fh.read(_CHUNK):
            block = tail + chunk
            # a tag that starts before the last "<" ends before it: the rest waits for the next block
            end = block.rfind(b"<")
            end = len(block) if end < 0 else end
            marks(block, end)
            tail = block[end:]
        marks(tail, len(tail))
    table.merged = tuple(merged)
    table.merged_unlisted = unlisted


_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_SHEET_DATA, _ROW, _C, _F, _V = (_MAIN + t for t in ("sheetData", "row", "c", "f", "v"))


def _formula_rows(table: TableFile) -> Generator[tuple[int, tuple[FormulaCell, ...]]]:
    """(row number, its formula cells) for each row of the first sheet holding a formula, in order,
    numbered as openpyxl numbers them. Streaming: each row is dropped once looked at."""
    from openpyxl.utils.cell import coordinate_to_tuple

    if not table.has_formulas or table.sheet_part is None:
        return
    with zipfile.ZipFile(table.path) as archive, archive.open(table.sheet_part) as fh:
        sheet_data: ElementTree.Element | None = None
        number = 0
        for event, element in ElementTree.iterparse(fh, events=("start", "end")):
            if event == "start":
                if element.tag == _SHEET_DATA:
                    sheet_data = element
                continue
            if element.tag == _SHEET_DATA:
                return  # what follows the rows (merged ranges…) is no row's
            if element.tag != _ROW:
                continue
            number = _row_number(element.get("r"), number)
            if next(element.iter(_F), None) is not None:
                found: list[FormulaCell] = []
                for position, cell in enumerate(element):
                    if cell.tag != _C or cell.find(_F) is None:
                        continue
                    value = cell.find(_V)
                    # an empty <v/> is a cached value only for a string result ("")
                    cached = value is not None and (bool(value.text) or cell.get("t") == "str")
                    found.append((_cell_column(element, position, coordinate_to_tuple), cached))
                yield number, tuple(found)
            if sheet_data is not None:
                sheet_data.clear()  # the rows read so far: memory stays flat


def _row_number(r: str | None, previous: int) -> int:
    try:
        return int(float(r)) if r else previous + 1
    except ValueError:
        return previous + 1


def _cell_column(
    row: ElementTree.Element, position: int, to_tuple: Callable[[str], tuple[int, int]]
) -> int:
    """The 0-based column of the row's cell at ``position``: its reference, or, as openpyxl counts
    a cell without one, one after the cell before it."""
    for back in range(position, -1, -1):
        ref = row[back].get("r")
        if ref:
            return to_tuple(ref)[1] - 1 + (position - back)
    return position


def _xlsx_rows(table: TableFile, progress: Progress) -> Iterator[Row]:
    import openpyxl

    wb = openpyxl.load_workbook(table.path, read_only=True, data_only=True)
    formulas = _formula_rows(table)  # reads nothing unless the sheet holds a formula
    try:
        ws = wb.worksheets[0]
        total = ws.max_row if isinstance(ws.max_row, int) else None
        with closing(formulas), progress("读取 " + table.path.name, total, "行") as advance:
            pending = next(formulas, None)
            rows: Iterator[tuple[Any, ...]] = ws.iter_rows(values_only=True)
            if total is not None:
                # openpyxl stops at the sheet's last row all the same; asking it for one more
                # would make it parse what follows the rows, all the merged ranges at once
                rows = itertools.islice(rows, total)
            for index, values in enumerate(rows, start=1):
                advance(1)
                while pending is not None and pending[0] < index:
                    pending = next(formulas, None)
                marks: tuple[FormulaCell, ...] = ()
                if pending is not None and pending[0] == index:
                    marks = pending[1]
                if index <= table.header_line:
                    continue
                cells: list[Cell] = [_xlsx_value(v) for v in values]
                if all(c is None or (isinstance(c, str) and not c.strip()) for c in cells) and all(
                    cached for _, cached in marks
                ):
                    continue  # blank, and no formula whose value the file lacks
                yield Row(index, cells, _render_original(cells), marks)
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
