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
from .codes import CATEGORY_INPUTS
from .errors import InputFileError, RegisterStateError
from .instants import CST, now, parse_instant
from .progress import Progress, no_progress
from .readers import Cell, Row, TableFile, is_bad_record, open_table

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


def parse_rows(
    table: TableFile,
    fields: list[FieldSpec],
    target: Table,
    progress: Progress,
) -> Iterator[tuple[Row, dict[str, Any] | Reject]]:
    positions = map_header(table, fields)
    specs = {s.name: s for s in fields}
    absent = [s.name for s in fields if s.name not in positions]
    lengths = _lengths(target)
    width = len(table.header)
    for row in table.rows(progress):
        bad = is_bad_record(row.cells)
        if bad is not None:
            yield row, Reject(None, f"cannot be split into fields: {bad}")
            continue
        cells = row.cells
        if table.kind == "csv" and len(cells) != width:
            extra = cells[width:]
            if len(cells) < width or any(str(c).strip() for c in extra if c is not None):
                yield row, Reject(None, f"{len(cells)} fields where the header has {width}")
                continue
        values: dict[str, Any] = {}
        reject: Reject | None = None
        for name, index in positions.items():
            cell = cells[index] if index < len(cells) else None
            title = table.header[index]
            try:
                if (
                    isinstance(cell, str)
                    and cell.startswith("#")
                    and table.kind == "xlsx"
                    and (cell in _EXCEL_ERRORS)
                ):
                    raise Reject(None, f"Excel error value {cell}")
                value = specs[name].parse(cell)
            except Reject as exc:
                reason = exc.reason if exc.reason != "empty" else "required value is empty"
                reject = Reject(f"{_column_letter(index)} ({title})", reason)
                break
            limit = lengths.get(name)
            if isinstance(value, str) and limit is not None and len(value) > limit:
                reject = Reject(
                    f"{_column_letter(index)} ({title})", f"longer than {limit} characters"
                )
                break
            values[name] = value
        if reject is None:
            for name in absent:  # a column the file lacks gets its default (status: 正常)
                values[name] = specs[name].parse(None)
        yield row, (reject if reject is not None else values)


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
    map_header(table, fields)
    schema.ensure_schema(engine)
    rejects = RejectWriter(reject_path or default_reject_path(path))
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
            loaded = 0
            chunk: list[dict[str, Any]] = []
            for row, outcome in parse_rows(table, fields, target, progress):
                if isinstance(outcome, Reject):
                    rejects.add(row, outcome)
                    continue
                if kind == "applications":
                    key = outcome["application_id"]
                    if key in seen_keys:
                        rejects.add(row, Reject("业务编号", "application id already loaded"))
                        continue
                    seen_keys.add(key)
                outcome["import_id"] = import_id
                outcome["source_line"] = row.line
                chunk.append(outcome)
                if len(chunk) >= _CHUNK_ROWS:
                    conn.execute(insert(target), chunk)
                    loaded += len(chunk)
                    chunk = []
            if chunk:
                conn.execute(insert(target), chunk)
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
