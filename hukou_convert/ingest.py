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
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Index, Table, delete, func, insert, select

from . import schema
from .bulk import BulkInserter, InsertPipeline
from .db import refresh_statistics
from .errors import InputFileError, RegisterStateError, UnprovenBytes
from .fields import (
    APPLICATION_FIELDS,
    PERSON_FIELDS,
    FieldSpec,
    Reject,
    map_header,
)
from .instants import now
from .parsing import PARALLEL_FROM_BYTES, ParsingProcesses, start_fork_server
from .progress import Progress, no_progress
from .readers import (
    ByteProof,
    FormulaCell,
    Row,
    TableFile,
    open_table,
)
from .rowplan import RowPlan
from .runlock import live_run_lock
from .runs import describe_live_run, unfinished_run

_CHUNK_ROWS = 5_000


class ImportMode(StrEnum):
    NEW = "new"  # refuse if the table already holds rows
    APPEND = "append"
    REPLACE = "replace"


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
    # how cells were read where the file does not simply hold a value (xlsx formulas, merged
    # ranges), each naming the file, line and column; the first few listed, the rest counted
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- read notes


class _ReadNotes:
    """What an import says about cells the file does not simply hold a value for: formula cells of
    loaded rows (their cached value loaded, or none: loaded as empty) and merged ranges over the
    columns read. Each names the file, line and column; the first few are listed, the rest counted,
    so that a large sheet keeps memory flat. No value is ever quoted."""

    LISTED = 20

    def __init__(self, table: TableFile, plan: RowPlan) -> None:
        self.file = str(table.path)
        self.labels = plan.labels
        self.lines: list[str] = []
        self._formulas_listed = 0
        self._unlisted_cached = 0
        self._unlisted_empty = 0
        self._merged(table)

    def _merged(self, table: TableFile) -> None:
        unlisted = table.merged_unlisted
        for merged in sorted(table.merged, key=lambda m: (m.min_row, m.min_col)):
            columns = [
                self.labels[i]
                for i in range(merged.min_col, merged.max_col + 1)
                if i in self.labels
            ]
            first_data = max(merged.min_row, table.header_line + 1)
            if columns == [self.labels.get(merged.min_col)] and first_data == merged.min_row:
                first_data += 1  # only the first cell's column is read: its rows below
            if not columns or first_data > merged.max_row:
                continue
            if len(self.lines) >= self.LISTED:
                unlisted += 1
                continue
            lines = (
                f"line {first_data}"
                if first_data == merged.max_row
                else f"lines {first_data}-{merged.max_row}"
            )
            self.lines.append(
                f"{self.file}, {lines}, column{'s' if len(columns) > 1 else ''}"
                f" {', '.join(columns)}: merged range {merged.ref}: the cells under it other than"
                f" the first ({merged.first}) are empty in the file and are read as empty"
            )
        if unlisted:
            self.lines.append(
                f"{self.file}: {unlisted} more merged ranges not listed"
                # beyond the ranges kept, their columns were not looked at
                + (" (some may be in columns not read)" if table.merged_unlisted else "")
            )

    def formulas(self, line: int, cells: tuple[FormulaCell, ...]) -> None:
        """The formula cells of a loaded row."""
        for column, cached in cells:
            label = self.labels.get(column)
            if label is None:
                continue  # a column the import does not read
            if self._formulas_listed >= self.LISTED:
                if cached:
                    self._unlisted_cached += 1
                else:
                    self._unlisted_empty += 1
                continue
            self._formulas_listed += 1
            self.lines.append(
                f"{self.file}, line {line}, column {label}: "
                + (
                    "a formula: the value loaded is its cached value (the result last saved"
                    " with the workbook)"
                    if cached
                    else "a formula with no cached value (the workbook was saved without"
                    " calculating it): loaded as empty"
                )
            )

    def finish(self) -> list[str]:
        more = self._unlisted_cached + self._unlisted_empty
        if more:
            self.lines.append(
                f"{self.file}: {more} more formula cells not listed ({self._unlisted_cached}"
                f" loaded with their cached value, {self._unlisted_empty} with none, loaded as"
                " empty)"
            )
        return self.lines


_QUOTED = re.compile(r"'[^']*'")


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
    rejects = reject_path or default_reject_path(path)
    # A large register file is parsed beside the inserts, which decodes every line strictly: its
    # bytes are proven as it is loaded, not read once more first (1M persons: 0.4 s). Appending
    # needs the file's SHA-256 before it loads (the same file twice would double the register).
    parsed_beside = kind == "persons" and _parsed_beside(path)
    if parsed_beside:
        start_fork_server()
    as_loaded = parsed_beside and mode is not ImportMode.APPEND
    table = open_table(path, encoding, whole=not as_loaded)  # may load nothing
    try:
        return import_table(engine, table, kind, fields, target, mode, rejects, progress)
    except UnprovenBytes:
        if table.checked:
            raise  # the file changed while it was read
    # nothing was imported: the whole file checked first, as a smaller one is, then loaded
    table = open_table(path, encoding)
    return import_table(engine, table, kind, fields, target, mode, rejects, progress)


def _parsed_beside(path: Path) -> bool:
    """A CSV file large enough to be parsed by processes of their own (:mod:`parsing`)."""
    try:
        return path.suffix.lower() not in (".xlsx", ".xlsm") and (
            path.stat().st_size >= PARALLEL_FROM_BYTES
        )
    except OSError:
        return False  # open_table says why


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
    proof = None if table.checked else ByteProof(path)  # the rest: see open_table(whole=False)
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
            # after a first write: SQLite's driver opens the transaction at one, not at DDL
            deferred = _defer_indexes(conn, target, mode)
            seen_keys = _existing_keys(conn, target) if kind == "applications" else set()
            columns = RowPlan(table, fields, target).columns
            writer = BulkInserter(conn, target, (*columns, "import_id", "source_line"))
            if any(name not in columns for name in writer.converters):
                raise AssertionError("import_id and source_line need no conversion")
            plan = RowPlan(table, fields, target, writer.converters)
            key_at = columns.index("application_id") if kind == "applications" else -1
            notes = _ReadNotes(table, plan)
            inserts = InsertPipeline(writer)
            try:
                if kind == "persons" and table.kind == "csv" and table.size >= PARALLEL_FROM_BYTES:
                    driver = conn.engine.url.drivername  # never the password
                    loaded = _parse_beside(
                        table, kind, driver, import_id, inserts, rejects, progress
                    )
                else:
                    loaded = _parse_into(
                        table, plan, import_id, inserts, rejects, notes, key_at, seen_keys, progress
                    )
            except BaseException:
                inserts.stop()  # the connection is the transaction's again before it rolls back
                raise
            inserts.close()  # the last chunk is in before the ledger row (or its error out)
            sha256 = table.sha256 if proof is None else proof.sha256()
            if loaded == 0:
                raise _NothingLoaded()
            for index in deferred:
                index.create(conn)
            conn.execute(
                schema.imports.update()
                .where(schema.imports.c.import_id == import_id)
                .values(loaded=loaded, rejected=rejects.count, file_sha256=sha256)
            )
    except _NothingLoaded:
        where = rejects.commit()
        raise InputFileError(
            str(path),
            f"no row could be loaded ({rejects.count} rejected"
            + (f", see {where}" if where else "")
            + "); nothing was imported",
        ) from None
    except BaseException as failure:
        rejects.discard()
        if proof is not None and isinstance(failure, Exception):
            _refuse_nul(proof, failure)
        raise
    finally:
        if proof is not None:
            proof.stop()
    refresh_statistics(engine, target)  # the rehearsal that follows plans with them
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
        notes=notes.finish(),
    )


def _parse_into(
    table: TableFile,
    plan: RowPlan,
    import_id: int,
    inserts: InsertPipeline,
    rejects: RejectWriter,
    notes: _ReadNotes,
    key_at: int,
    seen_keys: set[str],
    progress: Progress,
) -> int:
    """Parse every row: rejects to the reject file, the rest to ``inserts`` a chunk at a time (the
    inserts run beside the parsing). The number of rows handed over."""
    loaded = 0
    chunk: list[tuple[Any, ...]] = []
    for row in table.rows(progress):
        outcome = plan.parse(row.cells, row.line, row.formulas)
        if outcome is None:
            continue
        if isinstance(outcome, Reject):
            rejects.add(row, outcome)
            continue
        if key_at >= 0:
            key = outcome[key_at]
            if key in seen_keys:
                rejects.add(row, Reject("业务编号", "application id already loaded"))
                continue
            seen_keys.add(key)
        if row.formulas:
            notes.formulas(row.line, row.formulas)
        chunk.append((*outcome, import_id, row.line))
        if len(chunk) >= _CHUNK_ROWS:
            inserts.put(chunk)
            loaded += len(chunk)
            chunk = []
    if chunk:
        inserts.put(chunk)
        loaded += len(chunk)
    return loaded


def _defer_indexes(conn: Connection, target: Table, mode: ImportMode) -> list[Index]:
    """Into an empty table, in the import's transaction: its secondary indexes dropped, to be
    built once the rows are in (a sort instead of a B-tree insert per row: 1M persons on
    PostgreSQL, 8.6 s -> 4.7 s for the load). PostgreSQL and SQLite only, whose DDL is
    transactional: a failed import leaves the indexes as they were. (MySQL/MariaDB commit
    around DDL.)"""
    if mode is ImportMode.APPEND or conn.dialect.name not in ("postgresql", "sqlite"):
        return []
    if conn.execute(select(target.c[next(iter(target.primary_key)).name]).limit(1)).first():
        return []  # rows already there (cannot be, after the mode's checks; but never drop then)
    indexes = sorted(target.indexes, key=lambda ix: str(ix.name))
    for index in indexes:
        index.drop(conn)
    return indexes


def _parse_beside(
    table: TableFile,
    kind: str,
    driver: str,
    import_id: int,
    inserts: InsertPipeline,
    rejects: RejectWriter,
    progress: Progress,
) -> int:
    """:func:`_parse_into`, the parsing in processes of their own while this one inserts (a large
    CSV file: :mod:`parsing`). The number of rows handed over."""
    loaded = 0
    # COPY on PostgreSQL: the rows as COPY text in the connection's encoding
    encoding = inserts.writer.text_encoding() if inserts.writer.mode == "copy" else None
    with (
        progress("读取 " + table.path.name, table.size, "B") as advance,
        ParsingProcesses(table, kind, driver, import_id, copy_encoding=encoding) as parsing,
    ):
        for parsed in parsing.chunks():
            for line, original, column, reason in parsed.rejects:
                rejects.add(Row(line, [], original), Reject(column, reason))
            if parsed.text:
                inserts.put_text(parsed.text)
            elif parsed.rows:
                inserts.put(parsed.rows)
            loaded += parsed.count
            advance(parsed.read)
    return loaded


def _refuse_nul(proof: ByteProof, failure: Exception) -> None:
    """A load that failed on a file proven as it loaded: if the file holds a NUL byte, that is the
    error to give (PostgreSQL refuses a NUL in COPY text, before the proof is asked)."""
    if isinstance(failure, UnprovenBytes):
        return
    try:
        proof.sha256()
    except UnprovenBytes as nul:
        raise nul from failure
    except Exception:
        return  # the load's own error stands


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
