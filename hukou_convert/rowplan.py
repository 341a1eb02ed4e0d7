"""How the rows of one import file become register values: a plan worked out once from the file's
header, reading each row into a tuple of values or the Reject that keeps it out (naming the column
and the reason), with a fast path compiled for the file's columns and, for rows written as
PostgreSQL's COPY text, a faster one writing each row straight as its COPY line.
"""

from __future__ import annotations

import bisect
import csv
import functools
from collections.abc import Callable
from types import CodeType
from typing import Any

from sqlalchemy import Table

from .bulk import Convert
from .fields import (
    TEXT_PARSERS,
    FieldSpec,
    Parser,
    Reject,
    column_letter,
    map_header,
    parse_id_number,
)
from .readers import Cell, FormulaCell, MergedRange, TableFile, is_bad_record


def _lengths(table: Table) -> dict[str, int]:
    out: dict[str, int] = {}
    for column in table.columns:
        length = getattr(column.type, "length", None)
        if isinstance(length, int):
            out[column.name] = length
    return out


class _Slow(Exception):
    """A CSV cell the fast path does not take: the row is parsed again the careful way."""


# A cell of the fast path: ("text", cap), ("id", cap), or ("cached", cache, fill on a miss).
_FastCell = tuple[Any, ...]
_MISS = object()


def _cell_statements(cells: list[tuple[int, _FastCell]], env: dict[str, Any]) -> list[str]:
    """The statements reading a CSV row ``c`` into ``v0``, ``v1``…, as the cell functions would
    (raising _Slow where they would); what they need is put into ``env``."""
    body = []
    for n, (index, cell) in enumerate(cells):
        kind = cell[0]
        if kind == "text":
            env[f"cap{n}"] = cell[1]
            body.append(f"v{n} = c[{index}].strip()")
            body.append(f"if len(v{n}) > cap{n}: raise _Slow")
        elif kind == "id":
            env[f"cap{n}"] = cell[1]
            body.append(f"v{n} = ''.join(c[{index}].split()).upper()")
            body.append(f"if len(v{n}) > cap{n}: raise _Slow")
        else:
            env[f"cache{n}"], env[f"fill{n}"] = cell[1], cell[2]
            body.append(f"v{n} = cache{n}.get(c[{index}], _MISS)")
            body.append(f"if v{n} is _MISS: v{n} = fill{n}(c[{index}])")
    return body


@functools.lru_cache(maxsize=16)
def _code(source: str, name: str) -> CodeType:
    # a parsing process makes a COPY line function per part, the same source each time: its
    # compiling (about a millisecond) once
    return compile(source, f"<RowPlan {name}>", "exec")


def _compile(source: str, env: dict[str, Any], name: str) -> Any:
    exec(_code(source, name), env)
    return env[name]


def _compile_fast_row(
    cells: list[tuple[int, _FastCell]], defaults: tuple[Any, ...], empty: str | None
) -> Callable[[list[Cell]], tuple[Any, ...]]:
    """One function reading a CSV row's cells into values, its statements written for the file's
    columns: no call per cell but on a cache miss. Raises _Slow as the cell functions would."""
    env: dict[str, Any] = {"_Slow": _Slow, "_MISS": _MISS, "_defaults": defaults, "_empty": empty}
    body = _cell_statements(cells, env)
    values = "".join(
        f"v{n} or _empty, " if cell[0] in ("text", "id") else f"v{n}, "
        for n, (_, cell) in enumerate(cells)
    )
    source = "def fast_row(c):\n" + "".join(f"    {line}\n" for line in body)
    source += f"    return ({values}) + _defaults\n"
    fast_row: Callable[[list[Cell]], tuple[Any, ...]] = _compile(source, env, "fast_row")
    return fast_row


def _compile_copy_take(
    cells: list[tuple[int, _FastCell]],
    width: int,
    tail: str,
    tabs: int,
    lines: list[str],
    chunk_rows: int,
    flush: Callable[[], None],
) -> Callable[[list[str], int], bool]:
    """:meth:`RowPlan.copy_take`: the fast row written straight as a COPY line (no tuple, no
    join), kept only if it needs no escaping (no backslash, carriage return, tab or line break
    in a value); any doubt and the row is left to the careful path."""
    env: dict[str, Any] = {
        "_Slow": _Slow,
        "_MISS": _MISS,
        "_tail": tail,
        "_append": lines.append,
        "_lines": lines,
        "_flush": flush,
    }
    body = _cell_statements(cells, env)
    fields = "\\t".join(f"{{v{n}}}" for n in range(len(cells)))
    source = "def copy_take(c, line):\n"
    source += f"    if len(c) != {width}: return False\n"
    source += "    try:\n" + "".join(f"        {line}\n" for line in body)
    source += "    except _Slow:\n        return False\n"
    source += f"    s = f'{fields}{{_tail}}{{line}}\\n'\n"
    source += (
        f"    if '\\\\' in s or '\\r' in s or s.count('\\t') != {tabs} or s.count('\\n') != 1:"
        " return False\n"
    )
    source += f"    _append(s)\n    if len(_lines) >= {chunk_rows}: _flush()\n    return True\n"
    take: Callable[[list[str], int], bool] = _compile(source, env, "copy_take")
    return take


def _compile_copy_lines(
    cells: list[tuple[int, _FastCell]], width: int, tail: str, delimiter: str, lines: list[str]
) -> Callable[[list[str], int, int], int]:
    """:meth:`RowPlan.copy_lines`: the fast row of each line in turn, written as its COPY line
    without looking for characters to escape (the part holds none, and a cached value holding
    one is not cached), until a line it does not take."""
    env: dict[str, Any] = {
        "_Slow": _Slow,
        "_MISS": _MISS,
        "_tail": tail,
        "_delimiter": delimiter,
        "_append": lines.append,
    }
    body = _cell_statements(cells, env)
    fields = "\\t".join(f"{{v{n}}}" for n in range(len(cells)))
    # a line longer than the CSV reader's limit for a field may hold a field it refuses
    env["_longest"] = csv.field_size_limit()
    source = "def copy_lines(block, i, line):\n"
    source += "    first, n = line - i, len(block)\n"
    source += "    while i < n:\n"
    source += "        c = block[i]\n"
    source += "        if len(c) > _longest: return i\n"
    source += "        c = c.rstrip('\\r\\n').split(_delimiter)\n"
    source += f"        if len(c) != {width} or not c[0].strip(): return i\n"
    source += "        try:\n" + "".join(f"            {line}\n" for line in body)
    source += "        except _Slow:\n            return i\n"
    source += f"        _append(f'{fields}{{_tail}}{{first + i}}\\n')\n"
    source += "        i += 1\n"
    source += "    return n\n"
    copy_lines: Callable[[list[str], int, int], int] = _compile(source, env, "copy_lines")
    return copy_lines


class RowPlan:
    """How the rows of one file become register values, worked out once from its header.

    Each row becomes a tuple in the order of ``columns`` (the fields the file gives, then the ones it
    lacks with their defaults), or a Reject naming the column. ``convert`` maps a column to a
    function applied to its non-empty values after parsing (the driver's bind processing).
    ``empty`` is what an empty value becomes: None, or "" for rows written as PostgreSQL's COPY
    text with ``NULL ''`` (:mod:`parsing`: the register's values are text there, dates and
    instants converted to ISO text, and no parser gives "" for a value).

    CSV rows take a fast path: since a cell parser is pure, the value of a text seen before (a
    date, a code, a 户别) comes from a bounded cache instead of being parsed again, and the row's
    cells are read by one function compiled for the file's columns (a Python call per cell was
    half of the parsing's time). Any doubt (a reject, a value too long) sends the row down the
    careful path, which names the column and the reason.
    """

    _CACHE_LIMIT = 50_000

    def __init__(
        self,
        table: TableFile,
        fields: list[FieldSpec],
        target: Table,
        convert: dict[str, Convert] | None = None,
        empty: str | None = None,
    ) -> None:
        positions = map_header(table, fields)
        self._empty = empty
        lengths = _lengths(target)
        convert = convert or {}
        self.width = len(table.header)
        self.is_csv = table.kind == "csv"
        self.is_xlsx = table.kind == "xlsx"
        self._cells: list[tuple[int, str, Parser, int | None, Convert | None]] = []
        fast: list[tuple[int, _FastCell]] = []
        self.labels: dict[int, str] = {}  # column index -> "B (姓名)", for the columns read
        self._required: set[int] = set()
        names: list[str] = []
        for spec in fields:
            if spec.name not in positions:
                continue
            index = positions[spec.name]
            label = f"{column_letter(index)} ({table.header[index]})"
            limit = lengths.get(spec.name)
            conv = convert.get(spec.name)
            self._cells.append((index, label, spec.parse, limit, conv))
            self.labels[index] = label
            if spec.required:
                self._required.add(index)
            fast.append((index, self._fast_cell(spec, limit, conv)))
            names.append(spec.name)
        absent = [s for s in fields if s.name not in positions]
        # a column the file lacks gets its default (status: 正常)
        defaults = [s.parse(None) for s in absent]
        self._defaults = tuple(
            empty if v is None else convert[s.name](v) if s.name in convert else v
            for s, v in zip(absent, defaults, strict=True)
        )
        self.columns: tuple[str, ...] = tuple(names) + tuple(s.name for s in absent)
        # merged ranges over each column read, by first row: to say why a cell is empty
        self._merged: dict[int, tuple[list[int], list[MergedRange]]] = {}
        for merged in sorted(table.merged, key=lambda m: m.min_row):
            for index in range(merged.min_col, merged.max_col + 1):
                if index in self.labels:
                    starts, ranges = self._merged.setdefault(index, ([], []))
                    starts.append(merged.min_row)
                    ranges.append(merged)
        self._fast = fast
        self._fast_row = _compile_fast_row(fast, self._defaults, empty)

    def _fast_cell(self, spec: FieldSpec, limit: int | None, conv: Convert | None) -> _FastCell:
        cap = limit if limit is not None else 1 << 62
        if spec.parse in TEXT_PARSERS and conv is None:
            # no cache: free text (names, addresses) and household numbers rarely repeat, and
            # stripping a short code costs no more than looking it up
            return ("text", cap)
        if spec.parse is parse_id_number and conv is None:
            return ("id", cap)
        cache: dict[str, Any] = {}
        parse = spec.parse
        limit_ = self._CACHE_LIMIT
        empty = self._empty

        def fill(cell: str) -> Any:
            try:
                value = parse(cell)
            except Reject:
                raise _Slow from None
            if isinstance(value, str) and len(value) > cap:
                raise _Slow
            if value is None:
                value = empty
            elif conv is not None:
                value = conv(value)
            if value is not None and _needs_escaping(str(value)):
                raise _Slow  # copy_lines writes a value as it is: let parse say what it is
            if len(cache) >= limit_:
                cache.clear()  # the same dict: the compiled row function holds it
            cache[cell] = value
            return value

        return ("cached", cache, fill)

    def copy_take(
        self, key: str, lines: list[str], chunk_rows: int, flush: Callable[[], None]
    ) -> Callable[[list[str], int], bool]:
        """For rows written as COPY text (``empty`` ""): ``take(cells, line)`` appends the CSV
        row's COPY line, its values then ``key`` and ``line``, to ``lines`` and says True (calling
        ``flush`` once ``lines`` holds ``chunk_rows``), or says False for a row :meth:`parse` must
        read: the same line as :func:`parsing.copy_text` writes of parse's values, without making
        them (1M persons: a seventh of the parsing's time)."""
        assert self._empty == "" and self.is_csv, "COPY text of CSV rows only"
        tail = "".join(f"\t{value}" for value in (*self._defaults, key)) + "\t"
        tabs = len(self.columns) + 1
        return _compile_copy_take(self._fast, self.width, tail, tabs, lines, chunk_rows, flush)

    def copy_lines(
        self, key: str, lines: list[str], delimiter: str
    ) -> Callable[[list[str], int, int], int]:
        """For the lines of a plain part of a CSV file (:class:`parsing.Part`: no double quote,
        backslash or NUL, no tab but as the delimiter, so that each line is a record split at its
        delimiters and no value needs escaping): ``take(block, i, line)`` appends to ``lines``
        the COPY line of ``block[i]`` (line ``line`` of the file), then of the lines after it, as
        :meth:`copy_take` would write them, and returns the index of the first line it does not
        take (``len(block)`` if none): one :meth:`parse` must read, as would copy_take, one
        longer than the CSV reader's limit for a field, or one whose first cell is blank (a blank
        record is skipped, not parsed). No call, no list of cells kept, per line (1M persons: a
        third of the parsing's time)."""
        assert self._empty == "" and self.is_csv, "COPY text of CSV rows only"
        if any(_needs_escaping(str(value)) for value in (*self._defaults, key)):
            return lambda block, i, line: i  # never from the import: every line to parse
        tail = "".join(f"\t{value}" for value in (*self._defaults, key)) + "\t"
        return _compile_copy_lines(self._fast, self.width, tail, delimiter, lines)

    def parse(
        self, cells: list[Cell], line: int = 0, formulas: tuple[FormulaCell, ...] = ()
    ) -> tuple[Any, ...] | Reject | None:
        """The row's values, or the Reject that keeps it out, or None for a row to skip (blank
        but for formulas without a value in columns not read). ``line`` and ``formulas`` are the
        row's (xlsx): a formula the file holds no value for rejects the row in a required column
        and reads as empty in another."""
        count = len(cells)
        if self.is_csv and count == self.width:
            try:
                return self._fast_row(cells)
            except _Slow:
                pass  # the careful path below says which column and why
        bad = is_bad_record(cells)
        if bad is not None:
            return Reject(None, f"cannot be split into fields: {bad}")
        if self.is_csv and count != self.width:
            extra = cells[self.width :]
            if count < self.width or any(str(c).strip() for c in extra if c is not None):
                return Reject(None, f"{count} fields where the header has {self.width}")
        uncached = [column for column, cached in formulas if not cached] if formulas else []
        if uncached and all(_blank(c) for c in cells):
            read = [column for column in uncached if column in self.labels]
            # nothing in the row but formulas the file has no value for: nothing to load
            return Reject(self.labels[read[0]], NO_CACHED_VALUE) if read else None
        values: list[Any] = []
        for index, label, parse, limit, conv in self._cells:
            cell = cells[index] if index < count else None
            if uncached and index in uncached and index in self._required:
                return Reject(label, NO_CACHED_VALUE)
            try:
                if self.is_xlsx and isinstance(cell, str) and cell in _EXCEL_ERRORS:
                    raise Reject(None, f"Excel error value {cell}")
                value = parse(cell)
            except Reject as exc:
                reason = exc.reason if exc.reason != "empty" else "required value is empty"
                if self._merged and _blank(cell):
                    reason += self._under_merge(index, line)
                return Reject(label, reason)
            if isinstance(value, str) and limit is not None and len(value) > limit:
                return Reject(label, f"longer than {limit} characters")
            if value is None:
                value = self._empty
            elif conv is not None:
                value = conv(value)
            values.append(value)
        return (*values, *self._defaults)

    def _under_merge(self, index: int, line: int) -> str:
        """Why an empty cell is empty, if a merged range hides it (ranges do not overlap)."""
        starts, ranges = self._merged.get(index, ([], []))
        at = bisect.bisect_right(starts, line) - 1
        if at >= 0 and ranges[at].hides(index, line):
            merged = ranges[at]
            return f" (under the merged range {merged.ref}: only {merged.first} holds its value)"
        return ""


def _needs_escaping(text: str) -> bool:
    """A value COPY text must escape (:func:`parsing.copy_text`)."""
    return "\\" in text or "\t" in text or "\n" in text or "\r" in text


NO_CACHED_VALUE = (
    "a formula with no cached value (the workbook was saved without calculating it):"
    " open and save it in Excel, or paste the values"
)


def _blank(cell: Cell) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


_EXCEL_ERRORS = {
    "#N/A",
    "#VALUE!",
    "#REF!",
    "#DIV/0!",
    "#NUM!",
    "#NAME?",
    "#NULL!",
    "#GETTING_DATA",
}
