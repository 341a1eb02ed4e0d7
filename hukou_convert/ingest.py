"""Import a legacy register export (and its in-flight applications) into the built-in schema.

Rows that cannot be represented (a date that is no date, an unknown sex or 户别, a field too long) are
rejected, never dropped: the reject file keeps each one with its line, column, reason and the original
text. Rows whose values are merely suspicious (bad check character, empty fields) are loaded: finding
those is the checks' job, and they must be in the register to be reported. One import is one
transaction with its ledger row: a failed import leaves nothing behind.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select

from . import schema
from .bulk import BulkInserter, Convert
from .codes import CATEGORY_INPUTS
from .errors import InputFileError, RegisterStateError
from .instants import CST, now, parse_instant
from .progress import Progress, no_progress
from .readers import Cell, Row, TableFile, is_bad_record, open_table
from .runlock import live_run_lock
from .runs import describe_live_run, unfinished_run

_CHUNK_ROWS = 5_000


class ImportMode(StrEnum):
    NEW = "new"  # refuse if the table already holds rows
    APPEND = "append"
    REPLACE = "replace"


class Reject(Exception):
    def __init__(self, column: str | None, reason: str) -> None:
        self.column = column
        self.reason = reason


Parser = Callable[[Cell], Any]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    aliases: tuple[str, ...]
    parse: Parser
    required: bool = False  # the column must be present in the header


@dataclass
class ImportResult:
    kind: str
    file: str
    encoding: str | None
    mode: ImportMode
    loaded: int
    rejected: int
    reject_file: str | None
    import_id: int
    rejects_by_reason: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- cell parsers


def _text(cell: Cell) -> str | None:
    if type(cell) is str:  # every CSV cell: the fast path
        return cell.strip() or None
    if cell is None:
        return None
    if isinstance(cell, bool):
        return "1" if cell else "0"
    if isinstance(cell, float):
        if cell.is_integer():
            return str(int(cell))
        return repr(cell)
    if isinstance(cell, datetime | date):
        return cell.isoformat()
    text = str(cell).strip()
    return text or None


def _code_text(cell: Cell) -> str | None:
    """Codes and numbers kept as text. A float that cannot hold its digits exactly is refused: Excel
    keeps 15 significant digits and silently destroys an 18-digit ID or household number."""
    if type(cell) is str:
        return cell.strip() or None
    if isinstance(cell, float) and abs(cell) >= 2**53:
        raise Reject(
            None, "stored as a number in Excel: its digits were lost; format the column as text"
        )
    if isinstance(cell, int) and not isinstance(cell, bool) and abs(cell) >= 10**15:
        raise Reject(None, "stored as a number in Excel: re-export the column as text")
    return _text(cell)


def _id_number(cell: Cell) -> str | None:
    text = _code_text(cell)
    return None if text is None else "".join(text.split()).upper()


_SEX = {
    "男": "男",
    "1": "男",
    "m": "男",
    "male": "男",
    "女": "女",
    "2": "女",
    "f": "女",
    "female": "女",
}


def _sex(cell: Cell) -> str | None:
    text = _text(cell)
    if text is None:
        return None
    value = _SEX.get(text.lower())
    if value is None:
        raise Reject(None, f"性别 {text!r} is not 男/女 or 1/2")
    return value


_EXCEL_EPOCH = date(1899, 12, 30)
_DATE_RE = re.compile(r"^(\d{4})[-/.年]?(\d{1,2})[-/.月]?(\d{1,2})日?$")


def _date(cell: Cell) -> date | None:
    if cell is None:
        return None
    if isinstance(cell, datetime):
        return cell.date()
    if isinstance(cell, date):
        return cell
    if isinstance(cell, int | float) and not isinstance(cell, bool):
        if 1 <= cell < 2_958_466:  # an Excel serial date
            return _EXCEL_EPOCH + timedelta(days=int(cell))
        cell = str(int(cell))
    text = str(cell).strip()
    if not text:
        return None
    match = _DATE_RE.match(text)
    if match is None or (len(text) == 8 and not text.isdigit()):
        raise Reject(None, f"{text!r} is not a date (YYYY-MM-DD or YYYYMMDD)")
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise Reject(None, f"{text!r} is not a date that exists") from None


def _instant(cell: Cell) -> datetime | None:
    if cell is None:
        return None
    if isinstance(cell, datetime):
        return cell.replace(tzinfo=CST) if cell.tzinfo is None else cell
    if isinstance(cell, date):
        return datetime(cell.year, cell.month, cell.day, tzinfo=CST)
    text = str(cell).strip()
    if not text:
        return None
    if re.match(r"^\d{4}-\d{2}-\d{2}$", text) or re.match(r"^\d{8}$", text):
        day = _date(text)
        assert day is not None
        return datetime(day.year, day.month, day.day, tzinfo=CST)
    try:
        return parse_instant(text.replace("/", "-"))
    except ValueError:
        raise Reject(None, f"{text!r} is not a date and time") from None


def _category(cell: Cell) -> str | None:
    text = _text(cell)
    if text is None:
        return None
    value = CATEGORY_INPUTS.get(text.lower())
    if value is None:
        raise Reject(None, f"户别 {text!r} is neither 家庭户 nor 集体户")
    return value


def _status(cell: Cell) -> str:
    return _text(cell) or "正常"


PERSON_FIELDS: list[FieldSpec] = [
    FieldSpec(
        "id_number", ("公民身份号码", "身份证号码", "身份证号", "id_number"), _id_number, True
    ),
    FieldSpec("name", ("姓名", "name"), _text, True),
    FieldSpec("sex", ("性别", "sex"), _sex),
    FieldSpec("birth_date", ("出生日期", "birth_date"), _date),
    FieldSpec("household_id", ("户号", "household_id"), _code_text, True),
    FieldSpec("hukou_type", ("户口性质", "户口类别", "hukou_type"), _code_text, True),
    FieldSpec("household_category", ("户别", "household_category"), _category),
    FieldSpec("division_code", ("行政区划代码", "行政区划", "division_code"), _code_text, True),
    FieldSpec("status", ("人员状态", "status"), _status),
    FieldSpec("updated_at", ("变更时间", "updated_at"), _instant),
    FieldSpec("address", ("住址", "address"), _text),
    FieldSpec("police_station", ("派出所", "police_station"), _text),
    FieldSpec("relation", ("与户主关系", "relation"), _text),
]

_KINDS = {"农转非": "农转非", "非转农": "非转农"}
_APP_STATUS = {"已批准": "已批准", "待审批": "待审批", "已驳回": "已驳回"}


def _choice(options: dict[str, str], label: str) -> Parser:
    def parse(cell: Cell) -> str:
        text = _text(cell)
        if text is None or text not in options:
            raise Reject(None, f"{label} {text!r} is not one of {'/'.join(options)}")
        return options[text]

    return parse


def _required_text(cell: Cell) -> str:
    text = _code_text(cell)
    if text is None:
        raise Reject(None, "empty")
    return text


def _required_instant(cell: Cell) -> datetime:
    value = _instant(cell)
    if value is None:
        raise Reject(None, "empty")
    return value


APPLICATION_FIELDS: list[FieldSpec] = [
    FieldSpec("application_id", ("业务编号", "application_id"), _required_text, True),
    FieldSpec("id_number", ("公民身份号码", "身份证号码", "id_number"), _id_number, True),
    FieldSpec("kind", ("业务类型", "kind"), _choice(_KINDS, "业务类型"), True),
    FieldSpec("applied_at", ("申请时间", "applied_at"), _required_instant, True),
    FieldSpec("status", ("审批状态", "status"), _choice(_APP_STATUS, "审批状态"), True),
    FieldSpec("approved_at", ("审批时间", "approved_at"), _instant),
]


# ---------------------------------------------------------------- header


def map_header(table: TableFile, fields: list[FieldSpec]) -> dict[str, int]:
    """Field name -> column index. Missing required columns or a column given twice are errors."""
    lookup: dict[str, FieldSpec] = {}
    for spec in fields:
        for alias in spec.aliases:
            lookup[alias.lower()] = spec
    positions: dict[str, int] = {}
    for index, title in enumerate(table.header):
        found = lookup.get(title.strip().lstrip("\ufeff").lower())
        if found is None:
            continue  # extra columns are ignored
        spec = found
        if spec.name in positions:
            first = table.header[positions[spec.name]]
            raise InputFileError(
                str(table.path),
                f"columns {first!r} and {title!r} both give {spec.name}: keep one",
                table.header_line,
                _column_letter(index),
            )
        positions[spec.name] = index
    missing = [s for s in fields if s.required and s.name not in positions]
    if missing:
        names = ", ".join(f"{s.aliases[0]}/{s.aliases[-1]}" for s in missing)
        raise InputFileError(
            str(table.path), f"the header lacks required column(s): {names}", table.header_line
        )
    return positions


def _column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


# ---------------------------------------------------------------- rows


def _lengths(table: Table) -> dict[str, int]:
    out: dict[str, int] = {}
    for column in table.columns:
        length = getattr(column.type, "length", None)
        if isinstance(length, int):
            out[column.name] = length
    return out


class _Slow(Exception):
    """A CSV cell the fast path does not take: the row is parsed again the careful way."""


class RowPlan:
    """How the rows of one file become register values, worked out once from its header.

    Each row becomes a tuple in the order of ``columns`` (the fields the file gives, then the ones it
    lacks with their defaults), or a Reject naming the column. ``convert`` maps a column to a
    function applied to its non-empty values after parsing (the driver's bind processing).

    CSV rows take a fast path: one function per cell, and since a cell parser is pure, the value of a
    text seen before (a date, a code, a 户别) comes from a bounded cache instead of being parsed
    again. Any doubt (a reject, a value too long) sends the row down the careful path, which names
    the column and the reason.
    """

    _CACHE_LIMIT = 50_000

    def __init__(
        self,
        table: TableFile,
        fields: list[FieldSpec],
        target: Table,
        convert: dict[str, Convert] | None = None,
    ) -> None:
        positions = map_header(table, fields)
        lengths = _lengths(target)
        convert = convert or {}
        self.width = len(table.header)
        self.is_csv = table.kind == "csv"
        self.is_xlsx = table.kind == "xlsx"
        self._cells: list[tuple[int, str, Parser, int | None, Convert | None]] = []
        self._fast: list[tuple[int, Callable[[str], Any]]] = []
        names: list[str] = []
        for spec in fields:
            if spec.name not in positions:
                continue
            index = positions[spec.name]
            label = f"{_column_letter(index)} ({table.header[index]})"
            limit = lengths.get(spec.name)
            conv = convert.get(spec.name)
            self._cells.append((index, label, spec.parse, limit, conv))
            self._fast.append((index, self._fast_cell(spec, limit, conv)))
            names.append(spec.name)
        absent = [s for s in fields if s.name not in positions]
        # a column the file lacks gets its default (status: 正常)
        defaults = [s.parse(None) for s in absent]
        self._defaults = tuple(
            convert[s.name](v) if v is not None and s.name in convert else v
            for s, v in zip(absent, defaults, strict=True)
        )
        self.columns: tuple[str, ...] = tuple(names) + tuple(s.name for s in absent)

    def _fast_cell(
        self, spec: FieldSpec, limit: int | None, conv: Convert | None
    ) -> Callable[[str], Any]:
        cap = limit if limit is not None else 1 << 62
        if spec.parse is _text and conv is None:
            # free text (names, addresses) rarely repeats: not worth a cache

            def text(cell: str) -> str | None:
                value = cell.strip()
                if len(value) > cap:
                    raise _Slow
                return value or None

            return text
        if spec.parse is _id_number and conv is None:

            def id_number(cell: str) -> str | None:
                value = "".join(cell.split()).upper()
                if len(value) > cap:
                    raise _Slow
                return value or None

            return id_number
        cache: dict[str, Any] = {}
        parse = spec.parse
        limit_ = self._CACHE_LIMIT

        def cached(cell: str) -> Any:
            try:
                return cache[cell]
            except KeyError:
                pass
            try:
                value = parse(cell)
            except Reject:
                raise _Slow from None
            if isinstance(value, str) and len(value) > cap:
                raise _Slow
            if value is not None and conv is not None:
                value = conv(value)
            if len(cache) >= limit_:
                cache.clear()
            cache[cell] = value
            return value

        return cached

    def parse(self, cells: list[Cell]) -> tuple[Any, ...] | Reject:
        count = len(cells)
        if self.is_csv and count == self.width:
            try:
                return (*[f(cells[i]) for i, f in self._fast], *self._defaults)  # type: ignore[arg-type]
            except _Slow:
                pass  # the careful path below says which column and why
        bad = is_bad_record(cells)
        if bad is not None:
            return Reject(None, f"cannot be split into fields: {bad}")
        if self.is_csv and count != self.width:
            extra = cells[self.width :]
            if count < self.width or any(str(c).strip() for c in extra if c is not None):
                return Reject(None, f"{count} fields where the header has {self.width}")
        values: list[Any] = []
        for index, label, parse, limit, conv in self._cells:
            cell = cells[index] if index < count else None
            try:
                if self.is_xlsx and isinstance(cell, str) and cell in _EXCEL_ERRORS:
                    raise Reject(None, f"Excel error value {cell}")
                value = parse(cell)
            except Reject as exc:
                reason = exc.reason if exc.reason != "empty" else "required value is empty"
                return Reject(label, reason)
            if isinstance(value, str) and limit is not None and len(value) > limit:
                return Reject(label, f"longer than {limit} characters")
            if value is not None and conv is not None:
                value = conv(value)
            values.append(value)
        return (*values, *self._defaults)


def parse_rows(
    table: TableFile,
    fields: list[FieldSpec],
    target: Table,
    progress: Progress,
) -> Iterator[tuple[Row, dict[str, Any] | Reject]]:
    """Each row with its values by field name, or the Reject that keeps it out."""
    plan = RowPlan(table, fields, target)
    for row in table.rows(progress):
        outcome = plan.parse(row.cells)
        yield (
            row,
            outcome
            if isinstance(outcome, Reject)
            else dict(zip(plan.columns, outcome, strict=True)),
        )


_QUOTED = re.compile(r"'[^']*'")
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


# ---------------------------------------------------------------- reject file


class RejectWriter:
    """CSV of rejected rows (UTF-8 with BOM so Excel opens it), 0600, renamed into place when done."""

    HEADER = ("行号 line", "列 column", "原因 reason", "原始内容 original")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.count = 0
        self.by_reason: dict[str, int] = {}
        self._fh: Any = None
        self._writer: Any = None

    def add(self, row: Row, reject: Reject) -> None:
        if self._fh is None:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._fh = os.fdopen(fd, "w", encoding="utf-8-sig", newline="")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(self.HEADER)
        self._writer.writerow([row.line, reject.column or "", reject.reason, row.original])
        self.count += 1
        # grouped by column and reason with the values taken out: a summary names no personal data
        reason = _QUOTED.sub("…", reject.reason)
        key = f"{reject.column or 'row'}: {reason}"
        self.by_reason[key] = self.by_reason.get(key, 0) + 1

    def commit(self) -> str | None:
        if self._fh is None:
            return None
        self._fh.close()
        os.replace(self.tmp, self.path)
        return str(self.path)

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self.tmp.unlink(missing_ok=True)


def default_reject_path(source: Path) -> Path:
    return Path.cwd() / f"{source.stem}.rejects.csv"


# ---------------------------------------------------------------- loading


def import_register(
    engine: Engine,
    path: Path,
    *,
    mode: ImportMode = ImportMode.NEW,
    encoding: str | None = None,
    reject_path: Path | None = None,
    progress: Progress = no_progress,
) -> ImportResult:
    """Load a persons export into ``hukou_register``."""
    return _import(
        engine,
        path,
        "persons",
        PERSON_FIELDS,
        schema.register,
        mode,
        encoding,
        reject_path,
        progress,
    )


def import_applications(
    engine: Engine,
    path: Path,
    *,
    mode: ImportMode = ImportMode.NEW,
    encoding: str | None = None,
    reject_path: Path | None = None,
    progress: Progress = no_progress,
) -> ImportResult:
    """Load an in-flight 农转非/非转农 applications export into ``hukou_applications``."""
    return _import(
        engine,
        path,
        "applications",
        APPLICATION_FIELDS,
        schema.applications,
        mode,
        encoding,
        reject_path,
        progress,
    )


def _import(
    engine: Engine,
    path: Path,
    kind: str,
    fields: list[FieldSpec],
    target: Table,
    mode: ImportMode,
    encoding: str | None,
    reject_path: Path | None,
    progress: Progress,
) -> ImportResult:
    table = open_table(path, encoding)  # reads and checks the whole file first: may load nothing
    return import_table(
        engine,
        table,
        kind,
        fields,
        target,
        mode,
        reject_path or default_reject_path(path),
        progress,
    )


def import_table(
    engine: Engine,
    table: TableFile,
    kind: str,
    fields: list[FieldSpec],
    target: Table,
    mode: ImportMode,
    reject_path: Path,
    progress: Progress,
) -> ImportResult:
    """Load an opened source (a checked file, or a legacy table read through a mapping).

    Holds the live-run lock: rows added while a run is unfinished would be converted by its resume
    without being in its census (or skipped, below its checkpoint)."""
    map_header(table, fields)
    schema.ensure_schema(engine)
    with live_run_lock(engine, lambda note: describe_live_run(engine, note)):
        with engine.connect() as conn:
            unfinished = unfinished_run(conn)
        if unfinished is not None:
            raise RegisterStateError(
                f"run {unfinished.run_id} is unfinished ({unfinished.status}): finish it before"
                " importing, or its resume would meet records its census never counted"
            )
        return _load(engine, table, kind, fields, target, mode, reject_path, progress)


def _load(
    engine: Engine,
    table: TableFile,
    kind: str,
    fields: list[FieldSpec],
    target: Table,
    mode: ImportMode,
    reject_path: Path,
    progress: Progress,
) -> ImportResult:
    path = table.path
    rejects = RejectWriter(reject_path)
    try:
        with engine.begin() as conn:
            _check_mode(conn, kind, target, table, mode)
            if mode is ImportMode.REPLACE:
                conn.execute(delete(target))
            import_key = conn.execute(
                insert(schema.imports).values(
                    kind=kind,
                    file_name=path.name,
                    file_sha256=table.sha256,
                    encoding=table.encoding or "xlsx",
                    mode=mode.value,
                    loaded=0,
                    rejected=0,
                    imported_at=now(),
                )
            ).inserted_primary_key
            assert import_key is not None
            import_id = int(import_key[0])
            seen_keys = _existing_keys(conn, target) if kind == "applications" else set()
            columns = RowPlan(table, fields, target).columns
            writer = BulkInserter(conn, target, (*columns, "import_id", "source_line"))
            if any(name not in columns for name in writer.converters):
                raise AssertionError("import_id and source_line need no conversion")
            plan = RowPlan(table, fields, target, writer.converters)
            key_at = columns.index("application_id") if kind == "applications" else -1
            loaded = 0
            chunk: list[tuple[Any, ...]] = []
            for row in table.rows(progress):
                outcome = plan.parse(row.cells)
                if isinstance(outcome, Reject):
                    rejects.add(row, outcome)
                    continue
                if key_at >= 0:
                    key = outcome[key_at]
                    if key in seen_keys:
                        rejects.add(row, Reject("业务编号", "application id already loaded"))
                        continue
                    seen_keys.add(key)
                chunk.append((*outcome, import_id, row.line))
                if len(chunk) >= _CHUNK_ROWS:
                    writer.insert(chunk)
                    loaded += len(chunk)
                    chunk = []
            if chunk:
                writer.insert(chunk)
                loaded += len(chunk)
            if loaded == 0:
                raise _NothingLoaded()
            conn.execute(
                schema.imports.update()
                .where(schema.imports.c.import_id == import_id)
                .values(loaded=loaded, rejected=rejects.count)
            )
    except _NothingLoaded:
        where = rejects.commit()
        raise InputFileError(
            str(path),
            f"no row could be loaded ({rejects.count} rejected"
            + (f", see {where}" if where else "")
            + "); nothing was imported",
        ) from None
    except BaseException:
        rejects.discard()
        raise
    return ImportResult(
        kind=kind,
        file=str(path),
        encoding=table.encoding,
        mode=mode,
        loaded=loaded,
        rejected=rejects.count,
        reject_file=rejects.commit(),
        import_id=int(import_id),
        rejects_by_reason=dict(rejects.by_reason),
    )


class _NothingLoaded(Exception):
    pass


def _existing_keys(conn: Connection, target: Table) -> set[str]:
    return {r[0] for r in conn.execute(select(target.c.application_id))}


def _check_mode(
    conn: Connection, kind: str, target: Table, table: TableFile, mode: ImportMode
) -> None:
    held = conn.execute(select(func.count()).select_from(target)).scalar_one()
    if mode is ImportMode.NEW and held:
        raise RegisterStateError(
            f"the {kind} table already holds {held} rows: a second import would double it."
            " Use --append to add this file, or --replace to load it instead"
        )
    if mode is ImportMode.APPEND:
        same = conn.execute(
            select(schema.imports.c.import_id, schema.imports.c.file_name)
            .where(schema.imports.c.kind == kind, schema.imports.c.file_sha256 == table.sha256)
            .limit(1)
        ).first()
        if same is not None:
            raise RegisterStateError(
                f"this very file (same SHA-256) was already imported as import #{same[0]}"
                f" ({same[1]}); appending it again would double those rows"
            )
    if mode is ImportMode.REPLACE and kind == "persons":
        runs = conn.execute(select(func.count()).select_from(schema.runs)).scalar_one()
        if runs:
            raise RegisterStateError(
                "a cutover has run on this register: replacing it would orphan the history."
                " Use a new database for a new register"
            )
