"""Streaming, formula-safe xlsx tables for the audit workbook (openpyxl write-only mode).

Rules every cell follows, whatever the data holds:

- A string from data is always a text cell (``t="inlineStr"``), never a formula or an error value:
  openpyxl would turn ``=…`` into a formula and ``#N/A`` into an error. Text that a spreadsheet could
  take for a formula when a person edits the cell (``= + - @``, a leading tab or CR, the full-width
  ``＝＋－＠``) also carries the quote prefix, as if typed with a leading apostrophe.
- Characters XML cannot hold are dropped instead of crashing the write; text longer than a cell
  holds is cut to 32,767 characters.
- Identifiers (ID numbers, household numbers, codes) are text cells with number format ``@``.
- Instants are real date cells in China Standard Time (+08:00): xlsx has no time zones.
- Every table has a frozen, repeated-on-print header row and an autofilter; a table longer than a
  sheet continues on ``<title>2``, ``<title>3`` … (:data:`MAX_SHEET_ROWS`, header included).

Memory stays flat: each row is written to a temporary file as it is appended (the rows below a
header as XML by sheetrows.py, spliced into openpyxl's sheet at save), and strings are written inline,
with no shared-string table growing with the rows; each column keeps at most 4,096 short values'
cells, rendered once (:meth:`_ColumnCells.tail`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES, ILLEGAL_CHARACTERS_RE, Cell
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.properties import PageSetupProperties
from openpyxl.worksheet.worksheet import Worksheet
from openpyxl.writer.excel import ExcelWriter

from .instants import to_cst
from .sheetrows import SheetRows, SplicingZipFile, discard_all, inline_string, moment, number

# Excel's limit per sheet, header row included. Tests monkeypatch it to exercise the rollover.
MAX_SHEET_ROWS = 1_048_576
MAX_CELL_CHARS = 32_767
ZIP_LEVEL = 1

RISKY_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n", "＝", "＋", "－", "＠")

DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
TEXT_FORMAT = "@"
PERCENT_FORMAT = "0.00%"
INT_FORMAT = "#,##0"

Scalar = str | int | float | datetime | date | None
Kind = Literal["text", "code", "int", "datetime", "percent"]

HEADER_FONT = Font(bold=True)
HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")
TOTAL_FONT = Font(bold=True)


@dataclass(frozen=True)
class Column:
    header: str
    width: float
    kind: Kind = "text"
    number_format: str | None = None  # overrides the kind's format (e.g. "0" for record keys)


# What XML 1.0 cannot hold: openpyxl's control characters, and U+FFFE, U+FFFF and lone surrogates
# (a name from a legacy export may hold them; written raw they would make the file unreadable).
_NOT_XML = re.compile(ILLEGAL_CHARACTERS_RE.pattern + "|[\ud800-\udfff\ufffe\uffff]")


# Text that :meth:`_ColumnCells.tail` may write as it is: nothing to drop or escape, no leading
# character a spreadsheet could read as a formula or an error value (#…), no surrounding space.
# Whatever matches here takes the general path, so a false alarm costs only time.
_NEEDS_CARE = re.compile(r"[\x00-\x1f&<>\ud800-\udfff\ufffe\uffff]|^[=+\-@#＝＋－＠\s]|\s\Z")
_REF_LEN = len('<c r=""')
_CACHED_VALUES = 4096  # per column: the low-cardinality ones fit, memory stays bounded
_CACHED_CHARS = 64  # longer text is not kept (names of places fit)


def _fixed_offset(moment: datetime) -> bool:
    """Naive or at a fixed offset: equal instants are the same wall clock in CST. (Two times of a
    zone's repeated hour compare equal whatever their ``fold``, and are an hour apart.)"""
    return moment.tzinfo is None or type(moment.tzinfo) is timezone


def _is_ordinary(text: str) -> bool:
    return 0 < len(text) <= MAX_CELL_CHARS and not _NEEDS_CARE.search(text)


def clean_text(value: object) -> str:
    """Any value as text a cell can hold: no XML-illegal characters, at most 32,767 characters."""
    text = value if isinstance(value, str) else str(value)
    text = _NOT_XML.sub("", text)
    return text[:MAX_CELL_CHARS]


def is_risky(text: str) -> bool:
    """Would a spreadsheet (or openpyxl) read this text as something other than text?"""
    return text.startswith(RISKY_PREFIXES) or text in ERROR_CODES


def excel_datetime(moment: datetime | date) -> datetime | date:
    """An instant as China Standard Time wall clock (xlsx date cells carry no offset)."""
    if isinstance(moment, datetime):
        return to_cst(moment).replace(tzinfo=None)
    return moment


@dataclass(frozen=True)
class PageSetup:
    """What every sheet of one workbook shares: the printed banner and the tab colour."""

    banner: str
    tab_color: str | None = None


class _ColumnCells:
    """Reusable styled cells of one column: rows are serialised as they are appended, so one cell
    object per style is enough however many rows there are."""

    def __init__(self, ws: Worksheet, column: Column) -> None:
        self.kind = column.kind
        self.plain = WriteOnlyCell(ws)
        self.quoted = WriteOnlyCell(ws)
        self.quoted.quotePrefix = True
        self.date = WriteOnlyCell(ws)
        self.date.number_format = DATETIME_FORMAT
        if column.kind == "code":
            self.plain.number_format = TEXT_FORMAT
            self.quoted.number_format = TEXT_FORMAT
        elif column.kind == "datetime":
            self.plain.number_format = DATETIME_FORMAT
        elif column.kind == "percent":
            self.plain.number_format = PERCENT_FORMAT
        elif column.kind == "int":
            self.plain.number_format = INT_FORMAT
        if column.number_format is not None:
            self.plain.number_format = column.number_format
        # the workbook's style ids of these cells, for rows written as XML (sheetrows.py)
        self.plain_style = self.plain.style_id if self.plain.has_style else None
        self.quoted_style = self.quoted.style_id
        self.date_style = self.date.style_id
        # what :meth:`tail` writes for ordinary text (a code column's text is formatted as text)
        style = self.plain_style if column.kind == "code" else None
        self._text_style = f' s="{style}"' if style else ""
        self._tails: dict[str | datetime, str] = {}

    def tail(self, value: object) -> str:
        """The cell :meth:`xml` gives, without its opening ``<c r="REF"`` ("" for no cell).

        A city's change list is millions of rows of a dozen cells, most of them one of a few
        hundred values (division codes and names, labels, the cutoff): those are rendered once per
        column and kept (up to :data:`_CACHED_VALUES`); other ordinary text is written directly.
        Anything else takes :meth:`xml`."""
        # exact types only: a str subclass (an enum) or a datetime subclass takes the general path
        key: str | datetime | None = None
        if type(value) is str:
            if len(value) <= _CACHED_CHARS:
                key = value
        elif type(value) is datetime:
            if _fixed_offset(value):
                key = value
        elif value is None:
            return ""
        if key is not None and (cached := self._tails.get(key)) is not None:
            return cached
        if type(value) is str and _is_ordinary(value):
            tail = f'{self._text_style} t="inlineStr"><is><t>{value}</t></is></c>'
        else:
            tail = self.xml("", value)[_REF_LEN:]
        if key is not None and len(self._tails) < _CACHED_VALUES:
            self._tails[key] = tail
        return tail

    def xml(self, ref: str, value: object) -> str:
        """The cell ``convert`` gives, as sheet XML (the rows of a table are written as XML)."""
        if value is None:
            return ""
        if isinstance(value, bool):
            value = "是" if value else "否"
        if not isinstance(value, str) and self.kind != "code":  # as convert: a code is text
            if isinstance(value, datetime | date):
                return moment(ref, excel_datetime(value), self.date_style)
            if isinstance(value, int | float):
                style = self.plain_style if self.kind in ("int", "percent") else None
                return number(ref, value, style)
        text = clean_text(value)
        if is_risky(text):
            return inline_string(ref, text, self.quoted_style)
        return inline_string(ref, text, self.plain_style if self.kind == "code" else None)

    def convert(self, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, bool):
            value = "是" if value else "否"
        if isinstance(value, str) or self.kind == "code":
            return self._text(clean_text(value))
        if isinstance(value, datetime | date):
            return self._set(self.date, excel_datetime(value))
        if isinstance(value, int | float):
            return self._set(self.plain, value) if self.kind in ("int", "percent") else value
        return self._text(clean_text(value))

    def _text(self, text: str) -> object:
        if is_risky(text):
            cell = self._set(self.quoted, text)
        elif self.kind == "code":
            cell = self._set(self.plain, text)
        else:
            return text  # openpyxl binds ordinary text as a string cell
        cell.data_type = "s"  # never a formula ('f') or an error ('e')
        return cell

    @staticmethod
    def _set(cell: Cell, value: Scalar) -> Cell:
        cell.value = value
        return cell


def setup_sheet(
    ws: Worksheet,
    columns: Sequence[Column],
    page: PageSetup,
    header_row: int = 1,
) -> None:
    """Column widths, frozen header, print layout: must happen before the first row is appended."""
    for i, column in enumerate(columns, start=1):
        ws.column_dimensions[get_column_letter(i)].width = column.width
    ws.freeze_panes = f"A{header_row + 1}"
    ws.print_title_rows = f"{header_row}:{header_row}"
    ws.page_setup.orientation = "landscape"
    ws.page_setup.paperSize = Worksheet.PAPERSIZE_A4
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.sheet_properties.pageSetUpPr = PageSetupProperties(fitToPage=True)
    if page.tab_color:
        ws.sheet_properties.tabColor = page.tab_color
    header, footer = ws.oddHeader, ws.oddFooter
    assert header is not None and footer is not None
    header.center.text = page.banner
    footer.left.text = "&A"
    footer.right.text = "第 &P 页 / 共 &N 页"


def styled(
    ws: Worksheet,
    value: Scalar,
    font: Font | None = None,
    fill: PatternFill | None = None,
    wrap: bool = False,
) -> Cell:
    """A constant cell of the tool's own (header, title, banner), still written as text."""
    cell = WriteOnlyCell(ws)
    if isinstance(value, str):
        text = clean_text(value)
        cell.value = text
        cell.data_type = "s"
        if is_risky(text):
            cell.quotePrefix = True
    else:
        cell.value = value
    if font is not None:
        cell.font = font
    if fill is not None:
        cell.fill = fill
    if wrap:
        cell.alignment = Alignment(wrap_text=True, vertical="top")
    return cell


class TableWriter:
    """One table, header first, on one sheet or (past :data:`MAX_SHEET_ROWS`) several.

    ``preamble`` rows (a banner, a notice) go above the header of the first sheet only.
    """

    def __init__(
        self,
        wb: Workbook,
        title: str,
        columns: Sequence[Column],
        page: PageSetup,
        preamble: Callable[[Worksheet], Sequence[Sequence[object]]] | None = None,
    ) -> None:
        self.wb = wb
        self.title = title
        self.columns = list(columns)
        self.page = page
        self.preamble = preamble
        self.sheets: list[Worksheet] = []
        self.data_rows = 0  # over all sheets
        self._sheet_rows = 0  # rows written on the current sheet, preamble and header included
        self._header_row = 0
        self._cells: list[_ColumnCells] = []
        self._open_sheet()

    @property
    def sheet_titles(self) -> list[str]:
        return [ws.title for ws in self.sheets]

    @property
    def ws(self) -> Worksheet:
        return self.sheets[-1]

    def _open_sheet(self) -> None:
        if self.sheets:
            self._close_sheet()
        n = len(self.sheets) + 1
        ws = self.wb.create_sheet(self.title if n == 1 else f"{self.title}{n}")
        preamble = self.preamble(ws) if n == 1 and self.preamble is not None else []
        self._header_row = len(preamble) + 1
        setup_sheet(ws, self.columns, self.page, self._header_row)
        for row in preamble:
            ws.append(row)
        ws.append([styled(ws, c.header, HEADER_FONT, HEADER_FILL, wrap=True) for c in self.columns])
        self._sheet_rows = self._header_row
        self._cells = [_ColumnCells(ws, c) for c in self.columns]
        # every row below the header is written as XML and spliced in at save (sheetrows.py)
        self._rows = SheetRows(ws, self._header_row + 1, len(self.columns))
        self.sheets.append(ws)

    def append(self, values: Sequence[object]) -> None:
        if self._sheet_rows >= MAX_SHEET_ROWS:
            self._open_sheet()
        self._rows.append_tails(
            [cells.tail(v) for cells, v in zip(self._cells, values, strict=True)]
        )
        self._sheet_rows += 1
        self.data_rows += 1

    def append_total(self, values: Sequence[object]) -> None:
        """A total row in bold, inside the filtered range (the last row of the table)."""
        if self._sheet_rows >= MAX_SHEET_ROWS:
            self._open_sheet()
        row: list[object] = []
        for cells, v in zip(self._cells, values, strict=True):
            converted = cells.convert(v)
            if converted is None:
                row.append(None)
                continue
            cell = WriteOnlyCell(self.ws)
            if isinstance(converted, Cell):
                cell.value = converted.value
                cell.data_type = converted.data_type
                cell.number_format = converted.number_format
                cell.quotePrefix = converted.quotePrefix
            else:
                assert isinstance(converted, str | int | float)
                cell.value = converted
            cell.font = TOTAL_FONT
            row.append(cell)
        self._rows.append(row)
        self._sheet_rows += 1
        self.data_rows += 1

    def _close_sheet(self) -> None:
        last = get_column_letter(len(self.columns))
        self.ws.auto_filter.ref = f"A{self._header_row}:{last}{self._sheet_rows}"

    def finish(self) -> None:
        """Set the autofilter of the last sheet; extra rows below the table may follow."""
        self._close_sheet()

    def append_below(self, values: Sequence[object]) -> int:
        """A row below the table (outside its filter range), on the current sheet; its number."""
        self._rows.append([safe_value(self.ws, v) for v in values])
        self._sheet_rows += 1
        return self._sheet_rows


def safe_value(ws: Worksheet, value: object) -> object:
    """A value for a free-form row: text is always text, instants are +08:00 date cells."""
    if isinstance(value, Cell) or value is None:
        return value
    if isinstance(value, datetime | date):
        cell = WriteOnlyCell(ws)
        cell.value = excel_datetime(value)
        cell.number_format = DATETIME_FORMAT
        return cell
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return styled(ws, clean_text(value))


# ---------------------------------------------------------------- files written atomically

T = TypeVar("T")


@dataclass(frozen=True)
class SavedWorkbook:
    path: Path
    sha256_path: Path
    sha256: str
    sheets: list[str]


def write_workbook(target: Path, build: Callable[[Workbook], T]) -> tuple[T, SavedWorkbook]:
    """A streamed (write-only) workbook filled by ``build``, saved atomically as ``target`` (0600)
    with ``<target>.sha256`` beside it; on any failure no file and no temporary rows are left."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    wb = Workbook(write_only=True)
    try:
        built = build(wb)
        digest = save_atomically(wb, target)
    except BaseException:
        discard(wb)
        raise
    sha_path = target.with_name(target.name + ".sha256")
    write_text_atomically(sha_path, f"{digest}  {target.name}\n")
    return built, SavedWorkbook(target, sha_path, digest, wb.sheetnames)


def _save(wb: Workbook, fh: Any) -> None:
    """``wb.save(fh)``, except that a failed save (disk full) does not leave openpyxl's ZipFile open:
    collected later, it would try to finish the archive in a closed file and print a traceback."""
    if wb.write_only and not wb.worksheets:
        wb.create_sheet()
    # Deflate's fastest level: 3.5x the speed of the default on sheet XML for a file 30 % larger
    # (at 10M persons, 6 GB of XML: 20 s of compression instead of 75 s).
    archive = SplicingZipFile(
        fh, "w", zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=ZIP_LEVEL
    )
    try:
        archive.take_rows(wb.worksheets)
        wb.properties.modified = datetime.now(tz=UTC).replace(tzinfo=None)
        ExcelWriter(wb, archive).save()
        archive.check_stored()
    except BaseException:
        archive.fp = None  # ZipFile.close() and __del__ then do nothing
        raise
    finally:
        archive.discard_rows()


def _naming(err: OSError, target: Path) -> OSError:
    """The same error, naming the file it was about (a failed write() names none)."""
    if err.filename is not None:
        return err
    return OSError(err.errno, err.strerror or str(err), str(target))


def save_atomically(wb: Workbook, target: Path) -> str:
    """Save under a temporary name in the same directory, fsync, rename; the file's SHA-256."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w+b") as fh:
            _save(wb, fh)
            fh.flush()
            os.fsync(fh.fileno())
            fh.seek(0)
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, target) from None
        raise
    _fsync_dir(target.parent)
    return digest.hexdigest()


def discard(wb: Workbook) -> None:
    """After a failure: remove the temporary files openpyxl streams each sheet into (they hold the
    rows written so far, personal data included)."""
    discard_all(wb.worksheets)
    for ws in wb.worksheets:
        writer = getattr(ws, "_writer", None)
        if writer is None:
            continue
        with contextlib.suppress(Exception):  # already closed, or broken: removed below
            ws.close()
        out = getattr(writer, "out", None)
        if isinstance(out, str):
            Path(out).unlink(missing_ok=True)


def write_text_atomically(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _naming(err, target) from None
        raise
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
