"""The rows of a table written as sheet XML by the tool itself, spliced into openpyxl's sheet at save.

openpyxl builds an element per cell and binds every styled cell through an exception path: for the
change list of a city (millions of rows) that is most of the workbook's time. Here the rows below a
table's header are rendered as strings into a temporary file of their own (0600, like openpyxl's),
with the style ids openpyxl registered for the column's cells, and the file is spliced into the
sheet's XML just before ``</sheetData>`` when the workbook is saved; openpyxl still writes
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
from collections.abc import Sequence
from datetime import date, datetime
from typing import IO

from openpyxl.cell.cell import Cell
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import to_excel
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

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

    def append(self, values: Sequence[object]) -> None:
        """A row of plain values and configured openpyxl cells (totals, notes below a table)."""
        n = self.next_row
        self.append_xml([cell_xml(f"{self.letters[i]}{n}", v) for i, v in enumerate(values)])

    def _flush(self) -> None:
        assert self._file is not None
        self._file.write("".join(self._buffer))
        self._buffer.clear()

    def splice(self, ws: WriteOnlyWorksheet) -> None:
        """Close the sheet and put the rows into the XML openpyxl wrote for it (before saving)."""
        self._flush()
        assert self._file is not None
        self._file.close()
        self._file = None
        ws.close()  # openpyxl writes the sheet: the header rows, then what follows the rows
        target: str = ws._writer.out  # type: ignore[attr-defined]
        with open(target, "rb") as fh:
            written = fh.read()
        at = written.rfind(_END_OF_ROWS)
        if at < 0:
            raise AssertionError(f"{ws.title}: no </sheetData> in the sheet openpyxl wrote")
        fd, joined = tempfile.mkstemp(prefix="hukou-sheet-", suffix=".xml")
        try:
            with os.fdopen(fd, "wb") as out, open(self.path, "rb") as rows:
                out.write(written[:at])
                shutil.copyfileobj(rows, out, 1 << 20)
                out.write(written[at:])
            os.replace(joined, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(joined)
            raise
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the rows file (after a failure: it holds personal data)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        _OPEN_FILES.discard(self.path)


def splice_all(sheets: Sequence[object]) -> None:
    """Before a workbook is saved: every sheet's rows into its XML."""
    for ws in sheets:
        if isinstance(ws, WriteOnlyWorksheet) and (rows := _PENDING.pop(ws, None)) is not None:
            rows.splice(ws)


def discard_all(sheets: Sequence[object]) -> None:
    for ws in sheets:
        rows = _PENDING.pop(ws, None) if isinstance(ws, WriteOnlyWorksheet) else None
        if rows is not None:
            rows.discard()
