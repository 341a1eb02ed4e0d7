"""The rows of a table written as sheet XML by the tool itself, spliced into openpyxl's sheet at save.

openpyxl builds an element per cell and binds every styled cell through an exception path: for the
change list of a city (millions of rows) that is most of the workbook's time. Here the rows below a
table's header are rendered as strings into a temporary file of their own (0600, like openpyxl's),
with the style ids openpyxl registered for the column's cells, and when the workbook is saved the
file is streamed into the archive just before ``</sheetData>`` of the sheet openpyxl wrote
(:class:`SplicingZipFile`); openpyxl still writes
everything else (header, layout, styles, the package). The cells are those openpyxl would write:
inline strings (never a formula), numbers, and dates as serial numbers in a date style.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Sequence
from datetime import date, datetime
from typing import IO, TYPE_CHECKING, Any

from openpyxl.cell.cell import Cell
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import to_excel
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

if TYPE_CHECKING:
    from _typeshed import StrPath

_END_OF_ROWS = b"</sheetData>"
_FLUSH_ROWS = 2_000

# the rows waiting to be spliced into each write-only sheet when its workbook is saved (the rows
# do not refer to their sheet, so an abandoned workbook's entry goes with it)
_PENDING: weakref.WeakKeyDictionary[WriteOnlyWorksheet, SheetRows] = weakref.WeakKeyDictionary()
# every rows file not yet spliced or discarded: removed at exit whatever happened (they hold
# personal data), as openpyxl removes its own
_OPEN_FILES: set[str] = set()


@atexit.register
def _remove_leftovers() -> None:
    for path in list(_OPEN_FILES):
        with contextlib.suppress(OSError):
            os.unlink(path)


def text_xml(text: str) -> str:
    """Text as XML character data (lxml writes a carriage return as a character reference too)."""
    if "&" in text or "<" in text or ">" in text or "\r" in text:
        text = (
            text.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace("\r", "&#13;")
        )
    return text


def inline_string(ref: str, text: str, style: int | None) -> str:
    s = f' s="{style}"' if style else ""
    if not text:
        return f'<c r="{ref}"{s} t="inlineStr"/>'
    space = ' xml:space="preserve"' if text != text.strip() else ""
    return f'<c r="{ref}"{s} t="inlineStr"><is><t{space}>{text_xml(text)}</t></is></c>'


def number(ref: str, value: int | float, style: int | None) -> str:
    s = f' s="{style}"' if style else ""
    if not math.isfinite(value):  # as openpyxl: no value (a cell cannot hold NaN or infinity)
        return f'<c r="{ref}"{s} t="n"/>'
    return f'<c r="{ref}"{s} t="n"><v>{value:.16g}</v></c>'


def moment(ref: str, value: datetime | date, style: int | None) -> str:
    """A date cell: the serial number Excel counts from 1899-12-30 (a naive wall-clock time)."""
    serial: float = to_excel(value)  # type: ignore[no-untyped-call]
    return number(ref, serial, style)


def cell_xml(ref: str, value: object) -> str:
    """Any value or configured openpyxl cell of a row, as openpyxl's write-only mode writes it
    (only strings, numbers and dates occur in the tool's tables)."""
    if value is None:
        return ""
    style: int | None = None
    if isinstance(value, Cell):
        style = value.style_id if value.has_style else None
        kind, value = value.data_type, value.value
        if value is None:
            return f'<c r="{ref}" s="{style}"/>' if style else ""
        if kind == "s":
            return inline_string(ref, str(value), style)
    if isinstance(value, str):
        return inline_string(ref, value, style)
    if isinstance(value, datetime | date):
        return moment(ref, value, style)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return number(ref, value, style)
    raise TypeError(f"no cell for a {type(value).__name__}")


class SheetRows:
    """The rows below a table's header on one write-only sheet, numbered from ``first_row``."""

    def __init__(self, ws: WriteOnlyWorksheet, first_row: int, width: int) -> None:
        self.next_row = first_row
        self.letters = [get_column_letter(i) for i in range(1, width + 1)]
        fd, self.path = tempfile.mkstemp(prefix="hukou-rows-", suffix=".xml")
        _OPEN_FILES.add(self.path)
        self._file: IO[str] | None = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self._buffer: list[str] = []
        _PENDING[ws] = self

    def append_xml(self, cells: Sequence[str]) -> None:
        """A row whose cells are already rendered (``cells[i]`` for column i, "" for none)."""
        self._buffer.append(f'<row r="{self.next_row}">{"".join(cells)}</row>')
        self.next_row += 1
        if len(self._buffer) >= _FLUSH_ROWS:
            self._flush()

    def append_tails(self, tails: Sequence[str]) -> None:
        """A row whose cells are rendered but for their reference (``tails[i]``: column i's cell
        after ``<c r="REF"``, "" for none)."""
        n = self.next_row
        cells = "".join(
            [f'<c r="{c}{n}"{t}' for c, t in zip(self.letters, tails, strict=True) if t]
        )
        self._buffer.append(f'<row r="{n}">{cells}</row>')
        self.next_row = n + 1
        if len(self._buffer) >= _FLUSH_ROWS:
            self._flush()

    def append(self, values: Sequence[object]) -> None:
        """A row of plain values and configured openpyxl cells (totals, notes below a table)."""
        n = self.next_row
        self.append_xml([cell_xml(f"{self.letters[i]}{n}", v) for i, v in enumerate(values)])

    def _flush(self) -> None:
        assert self._file is not None
        self._file.write("".join(self._buffer))
        self._buffer.clear()

    def close(self, ws: WriteOnlyWorksheet) -> None:
        """Close the rows file and the sheet (openpyxl writes its head and tail into its own file,
        which :class:`SplicingZipFile` puts around the rows as it stores the sheet)."""
        self._flush()
        assert self._file is not None
        self._file.close()
        self._file = None
        ws.close()

    def discard(self) -> None:
        """Remove the rows file (after a failure: it holds personal data)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        _OPEN_FILES.discard(self.path)


class SplicingZipFile(zipfile.ZipFile):
    """The workbook's archive: a sheet with rows of ours is stored as openpyxl's head of the sheet,
    the rows file, openpyxl's tail, streamed into the archive. No joined copy of the sheet is
    written first: at 10M persons the change list is 6 GB of XML, which the copy wrote and read
    once more (with deflate's fastest level, the 10M workbooks by township: 411 s -> 348 s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._splices: dict[str, SheetRows] = {}  # openpyxl's file of a sheet -> its rows
        self._taken: list[SheetRows] = []

    def take_rows(self, sheets: Sequence[object]) -> None:
        """Before the save: every sheet's rows closed and waiting for the sheet to be stored. The
        rows files are the archive's from here: removed once stored, or by :meth:`discard_rows`."""
        for ws in sheets:
            if isinstance(ws, WriteOnlyWorksheet) and (rows := _PENDING.pop(ws, None)) is not None:
                self._taken.append(rows)  # first: whatever fails next, discard_rows removes it
                rows.close(ws)
                self._splices[ws._writer.out] = rows  # type: ignore[attr-defined]

    def check_stored(self) -> None:
        """After the save: every sheet's rows went into the archive (a sheet stored some other
        way would have lost them)."""
        if self._splices:
            raise AssertionError(f"{len(self._splices)} sheet(s) stored without their rows")

    def discard_rows(self) -> None:
        """After the save, or a failed one: no rows file left."""
        for rows in self._taken:
            rows.discard()
        self._taken.clear()
        self._splices.clear()

    def write(
        self,
        filename: StrPath,
        arcname: StrPath | None = None,
        compress_type: int | None = None,
        compresslevel: int | None = None,
    ) -> None:
        rows = self._splices.pop(os.fspath(filename), None)
        if rows is None:
            super().write(filename, arcname, compress_type, compresslevel)
            return
        try:
            with open(filename, "rb") as fh:
                sheet = fh.read()  # openpyxl's sheet without the rows: a few kilobytes
            at = sheet.rfind(_END_OF_ROWS)
            if at < 0:
                raise AssertionError(f"{arcname}: no </sheetData> in the sheet openpyxl wrote")
            size = len(sheet) + os.path.getsize(rows.path)
            name = os.fspath(arcname if arcname is not None else filename)
            # as ZipFile.write decides: data that does not compress may come out larger
            zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
            with self.open(name, "w", force_zip64=zip64) as out, open(rows.path, "rb") as body:
                out.write(sheet[:at])
                shutil.copyfileobj(body, out, 1 << 20)
                out.write(sheet[at:])
        finally:
            rows.discard()


def discard_all(sheets: Sequence[object]) -> None:
    for ws in sheets:
        rows = _PENDING.pop(ws, None) if isinstance(ws, WriteOnlyWorksheet) else None
        if rows is not None:
            rows.discard()
