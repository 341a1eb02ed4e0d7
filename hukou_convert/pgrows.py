"""What PostgreSQL itself records of a table's changes, which lets a run held to a rehearsal's
plan know the register unchanged since without reading it again.

Every row version carries ``xmin``, the transaction that wrote it; an update writes a new version,
a delete removes one. So if no row the run's snapshot sees was written by a transaction that had
not finished when the rehearsal took its snapshot, every row the run sees was one the rehearsal
saw; with as many rows, they are the same rows. The rehearsal keeps its snapshot's ``xmin`` (every
transaction before it had finished), the row count, and what makes the comparison of transaction
ids meaningful: the same cluster (its system identifier), database, table and file (a rewrite —
``TRUNCATE``, ``VACUUM FULL``, ``ALTER TABLE … TYPE`` — gives the table another), on the same
timeline (a restore to an earlier point starts a new one) and no earlier in the write-ahead log.

Each doubt falls on the safe side: a row written by a transaction running beside the rehearsal,
even one that changed nothing, an old frozen row whose id reads as recent after a wraparound,
more than 2³¹ transactions since the rehearsal, a view or a function the role may not call: the
run reads the register against the plan record by record, as it does on MySQL/MariaDB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, func, literal_column, select, text
from sqlalchemy.exc import DBAPIError

from .register import RegisterMap

_IDS = 1 << 32  # a transaction id in a row is the low 32 bits of the 64-bit id
_MAX_SINCE = (1 << 31) - 10_000_000  # beyond, the 32-bit ids no longer compare


@dataclass(frozen=True)
class RowsState:
    """The register's rows as the rehearsal's snapshot saw them, and where."""

    system: str  # the cluster's system identifier
    database: int  # oid
    table: int  # oid
    filenode: int
    timeline: str  # of the write-ahead log, as in its file names
    lsn: str  # the write-ahead log's position then
    xmin: int  # every transaction before it had finished (64-bit, with its epoch)
    rows: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> RowsState | None:
        try:
            return cls(
                str(raw["system"]),
                int(raw["database"]),
                int(raw["table"]),
                int(raw["filenode"]),
                str(raw["timeline"]),
                str(raw["lsn"]),
                int(raw["xmin"]),
                int(raw["rows"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _table_name(conn: Connection, register: RegisterMap) -> str:
    table = register.table
    quote = conn.dialect.identifier_preparer.quote
    return f"{quote(table.schema)}.{quote(table.name)}" if table.schema else quote(table.name)


def _where(conn: Connection, register: RegisterMap) -> tuple[Any, ...] | None:
    """The cluster, database, table, file, timeline and log position, as the current snapshot
    sees them; None if any cannot be read (a partitioned table or a view has no file of its own)."""
    name = _table_name(conn, register)
    try:
        with conn.begin_nested():
            found = tuple(
                conn.execute(
                    text(
                        "SELECT (SELECT system_identifier FROM pg_control_system())::text,"
                        " (SELECT oid FROM pg_database WHERE datname = current_database()),"
                        " CAST(:t AS regclass)::oid, pg_relation_filenode(CAST(:t AS regclass)),"
                        " substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8),"
                        " pg_current_wal_lsn()::text"
                    ),
                    {"t": name},
                ).one()
            )
    except DBAPIError:
        return None
    return None if any(value is None for value in found) else found


def rehearsal_state(conn: Connection, register: RegisterMap) -> RowsState | None:
    """In the rehearsal's one snapshot (REPEATABLE READ): what a run needs to know the register
    unchanged since. None elsewhere than PostgreSQL, or where it cannot be read."""
    if conn.dialect.name != "postgresql":
        return None
    where = _where(conn, register)
    if where is None:
        return None
    try:
        with conn.begin_nested():
            xmin, rows = conn.execute(
                select(
                    func.txid_snapshot_xmin(func.txid_current_snapshot()),
                    select(func.count())
                    .select_from(register.table)
                    .where(literal_column("xmin").is_not(None))  # no xmin: a view
                    .scalar_subquery(),
                )
            ).one()
    except DBAPIError:
        return None
    system, database, table, filenode, timeline, lsn = where
    return RowsState(
        str(system),
        int(database),
        int(table),
        int(filenode),
        str(timeline),
        str(lsn),
        int(xmin),
        int(rows),
    )


def unchanged_since(conn: Connection, register: RegisterMap, kept: RowsState) -> bool:
    """In the run's snapshot, taken before its first write: True only if the register holds the
    very rows the rehearsal's snapshot held (see the module's description)."""
    if conn.dialect.name != "postgresql":
        return False
    where = _where(conn, register)
    if where is None or tuple(str(v) for v in where[:5]) != (
        kept.system,
        str(kept.database),
        str(kept.table),
        str(kept.filenode),
        kept.timeline,
    ):
        return False
    try:
        with conn.begin_nested():
            later, since = conn.execute(
                text(
                    "SELECT pg_current_wal_lsn() >= CAST(:lsn AS pg_lsn),"
                    " txid_snapshot_xmax(txid_current_snapshot()) - :xmin"
                ),
                {"lsn": kept.lsn, "xmin": kept.xmin},
            ).one()
            if not later or not 0 <= int(since) < _MAX_SINCE:
                return False
            # a row is older than the rehearsal's snapshot when its writer's id precedes the
            # snapshot's xmin: its age (transactions since, wraparound-aware) is the greater
            rows, recent = conn.execute(
                select(
                    func.count(),
                    func.count().filter(
                        func.age(literal_column("xmin"))
                        <= func.age(literal_column(f"CAST('{kept.xmin % _IDS}' AS xid)"))
                    ),
                ).select_from(register.table)
            ).one()
    except DBAPIError:
        return False
    return int(rows) == kept.rows and int(recent) == 0
