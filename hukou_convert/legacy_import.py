"""``import --from-db URL --mapping FILE``: copy a legacy register table into the built-in schema,
for teams who rehearse on a copy rather than on the production register.

The legacy table is read through its mapping (names validated before any SQL runs), in key order,
streamed; each row goes through the same validation as a file's rows, so rejects keep their key and
reason. Status values the mapping calls active become 正常; other values are kept as they are.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from . import schema
from .db import translate_errors
from .fields import PERSON_FIELDS
from .ingest import ImportMode, ImportResult, import_table
from .mapping import OPTIONAL_FIELDS, REQUIRED_FIELDS, load_mapping
from .progress import Progress, no_progress
from .readers import Cell, Row, TableFile
from .register import RegisterMap

_FIELDS = [*REQUIRED_FIELDS, *OPTIONAL_FIELDS]


@dataclass
class LegacySource(TableFile):
    """A legacy table as an import source: rows in key order, one "line" per row."""

    engine: Engine | None = None
    register: RegisterMap | None = None
    fields: list[str] = field(default_factory=list)
    active: tuple[str, ...] = ()

    def _query(self) -> Any:
        assert self.register is not None
        t = self.register.table
        return (
            select(t.c.record_id, *(t.c[f] for f in self.fields))
            .order_by(t.c.record_id)
            .execution_options(stream_results=True, yield_per=20_000)
        )

    def rows(self, progress: Progress) -> Iterator[Row]:
        assert self.engine is not None
        status_at = self.fields.index("status")
        with (
            self.engine.connect() as conn,
            progress("读取 " + self.path.name, self.size, "行") as advance,
        ):
            for line, values in enumerate(conn.execute(self._query()), start=1):
                cells: list[Cell] = [_cell(v) for v in values[1:]]
                status = cells[status_at]
                if status is not None and str(status) in self.active:
                    cells[status_at] = "正常"
                advance(1)
                yield Row(line, cells, _original(values))


def _cell(value: Any) -> Cell:
    if value is None or isinstance(value, str | int | float | bool | date | datetime):
        cell: Cell = value
        return cell
    return str(value)  # Decimal and the like: as text, the way a file would hold them


def _original(values: Any) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(["" if v is None else str(v) for v in values])
    return out.getvalue()


def open_legacy(source_engine: Engine, mapping_file: Path, active: tuple[str, ...]) -> LegacySource:
    """Validate the mapping, count the rows and fingerprint them (one pass): a source that cannot
    be read loads nothing."""
    register = load_mapping(source_engine, mapping_file)
    t = register.table
    fields = [f for f in _FIELDS if f in t.c]
    source = LegacySource(
        path=Path(f"{t.fullname}"),
        kind="db",
        encoding=None,
        sha256="",
        header=fields,
        header_line=0,
        size=0,
        engine=source_engine,
        register=register,
        fields=fields,
        active=register.active_values or active,
    )
    digest = hashlib.sha256()
    with translate_errors(), source_engine.connect() as conn:
        source.size = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        for values in conn.execute(source._query()):
            digest.update(_original(values).encode("utf-8"))
            digest.update(b"\n")
    source.sha256 = digest.hexdigest()
    return source


def import_from_db(
    engine: Engine,
    source_engine: Engine,
    mapping_file: Path,
    *,
    mode: ImportMode = ImportMode.NEW,
    active: tuple[str, ...] = ("正常",),
    reject_path: Path | None = None,
    progress: Progress = no_progress,
) -> ImportResult:
    """Copy a legacy register table (read through its mapping) into the built-in register."""
    source = open_legacy(source_engine, mapping_file, active)
    rejects = reject_path or Path.cwd() / f"{source.path.name}.rejects.csv"
    return import_table(
        engine, source, "persons", PERSON_FIELDS, schema.register, mode, rejects, progress
    )
