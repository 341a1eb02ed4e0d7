"""What PostgreSQL itself records of a table's changes, which lets a run held to a rehearsal's
plan know the register unchanged since without reading it again.

Every row version carries ``xmin``, the transaction that wrote it; an update writes a new version,
a delete removes one. So if no row the run's snapshot sees was written by a transaction that had
not finished when the rehearsal took its snapshot, every row the run sees was one the rehearsal
saw; with as many rows, they are the same rows. What the rows mean is in the system catalog, whose
rows are versioned the same way: the table's own row, its columns (a column renamed, or dropped
and added again with a default, changes what is read without writing a row), their types and
enum labels. They are held to the same test, and counted too. The rehearsal keeps its snapshot's
``xmin`` (every transaction before it had finished), both counts, and what makes the comparison of
transaction ids meaningful: the same cluster (its system identifier), database, table and file (a
rewrite — ``TRUNCATE``, ``VACUUM FULL``, ``ALTER TABLE … TYPE`` — gives the table another), on
the same timeline and no earlier in the write-ahead log, and the same start of the server: a
database restored or cloned from a backup or a storage snapshot keeps its cluster's identifier,
may keep its timeline and would hand out transaction ids again, but only a server started anew
serves it.

Each doubt falls on the safe side: a row written by a transaction running beside the rehearsal,
even one that changed nothing, an old frozen row whose id reads as recent after a wraparound,
more than 2³¹ transactions since, a table that is not a plain table (a view, a partitioned table),
one with child tables (their rows are the register's too) or row security, a function the role
may not call, a server restarted since: the run reads the register against the plan record by
record, as it does on MySQL/MariaDB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import Connection, func, select, text
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
    started: str  # the server's start (seconds since the epoch)
    lsn: str  # the write-ahead log's position when the rehearsal had read the register
    xmin: int  # every transaction before it had finished (64-bit, with its epoch)
    rows: int
    catalog: int  # the table's rows in the system catalog (see _CATALOG)

    @property
    def place(self) -> tuple[str, int, int, int, str, str]:
        """Where the rows were read: the same place makes transaction ids comparable."""
        return (self.system, self.database, self.table, self.filenode, self.timeline, self.started)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> RowsState | None:
        try:
            lsn = str(raw["lsn"])
            _lsn(lsn)  # a position that reads as one
            return cls(
                str(raw["system"]),
                int(raw["database"]),
                int(raw["table"]),
                int(raw["filenode"]),
                str(raw["timeline"]),
                str(raw["started"]),
                lsn,
                int(raw["xmin"]),
                int(raw["rows"]),
                int(raw["catalog"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


# Where the table is, and whether it is one whose rows alone are what a SELECT from it reads: a
# plain table (relkind 'r'), without child tables and without row security.
_WHERE = """
SELECT (SELECT system_identifier FROM pg_control_system())::text,
       (SELECT oid FROM pg_database WHERE datname = current_database()),
       c.oid, pg_relation_filenode(c.oid),
       substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8),
       extract(epoch FROM pg_postmaster_start_time())::text,
       pg_current_wal_lsn()::text,
       c.relkind = 'r' AND NOT c.relrowsecurity
         AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid)
FROM pg_class c WHERE c.oid = CAST(:t AS regclass)
"""

# The catalog rows that say what the table's rows mean: its own, its columns', its columns' types
# (and a domain's base type) and their enum labels, its inheritance and its row security policies.
_CATALOG = """
WITH columns AS (SELECT a.xmin, a.atttypid FROM pg_attribute a
                 WHERE a.attrelid = CAST(:t AS regclass)),
     types AS (SELECT atttypid AS oid FROM columns
               UNION SELECT ty.typbasetype FROM pg_type ty JOIN columns ON ty.oid = columns.atttypid
               WHERE ty.typbasetype <> 0),
     catalog AS (SELECT c.xmin FROM pg_class c WHERE c.oid = CAST(:t AS regclass)
                 UNION ALL SELECT xmin FROM columns
                 UNION ALL SELECT ty.xmin FROM pg_type ty WHERE ty.oid IN (SELECT oid FROM types)
                 UNION ALL SELECT e.xmin FROM pg_enum e WHERE e.enumtypid IN (SELECT oid FROM types)
                 UNION ALL SELECT i.xmin FROM pg_inherits i
                   WHERE i.inhparent = CAST(:t AS regclass) OR i.inhrelid = CAST(:t AS regclass)
                 UNION ALL SELECT p.xmin FROM pg_policy p WHERE p.polrelid = CAST(:t AS regclass))
SELECT count(*), count(*) FILTER (WHERE age(xmin) <= age(CAST(CAST(:x AS text) AS xid)))
FROM catalog
"""


def _table_name(conn: Connection, register: RegisterMap) -> str:
    table = register.table
    quote = conn.dialect.identifier_preparer.quote
    return f"{quote(table.schema)}.{quote(table.name)}" if table.schema else quote(table.name)


def _lsn(text: str) -> int:
    """A write-ahead log position (``X/Y``, hexadecimal) as a number that compares."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _where(conn: Connection, name: str) -> RowsState | None:
    """The cluster, database, table, file, timeline, server start and log position, as the
    current snapshot sees them (no transaction id, no counts yet); None if any cannot be read, or
    the table is not one whose own rows are all it reads."""
    found = tuple(conn.execute(text(_WHERE), {"t": name}).one())
    if any(value is None for value in found) or not found[-1]:
        return None
    system, database, table, filenode, timeline, started, lsn, _plain = found
    return RowsState(
        str(system),
        int(database),
        int(table),
        int(filenode),
        str(timeline),
        str(started),
        str(lsn),
        xmin=0,
        rows=0,
        catalog=0,
    )


def _counts(conn: Connection, register: RegisterMap, name: str, xmin: int) -> tuple[int, ...]:
    """The register's rows and those written by a transaction not older than ``xmin``; the same
    of its catalog rows."""
    # a row is older than a snapshot when its writer's id precedes the snapshot's xmin: its age
    # (transactions since, wraparound-aware) is then the greater
    rows, recent = conn.execute(
        select(
            func.count(),
            func.count().filter(
                text("age(xmin) <= age(CAST(CAST(:x AS text) AS xid))").bindparams(x=xmin % _IDS)
            ),
        ).select_from(register.table)
    ).one()
    catalog, recent_catalog = conn.execute(text(_CATALOG), {"t": name, "x": xmin % _IDS}).one()
    return int(rows), int(recent), int(catalog), int(recent_catalog)


@dataclass(frozen=True)
class _Observed:
    state: RowsState  # its xmin: the snapshot's own, or the kept state's
    recent: int  # rows and catalog rows written by a transaction not older than that xmin
    since: int  # transactions since that xmin (the snapshot's xmax less it)


def _observe(conn: Connection, register: RegisterMap, kept: RowsState | None) -> _Observed | None:
    """The register as the current snapshot sees it, in a savepoint of its own: measured against
    the snapshot's own xmin, or against ``kept``'s when given (and then only in ``kept``'s place).
    None elsewhere than PostgreSQL, in another place, or where it cannot be read."""
    if conn.dialect.name != "postgresql":
        return None
    name = _table_name(conn, register)
    try:
        with conn.begin_nested():
            where = _where(conn, name)
            if where is None or (kept is not None and where.place != kept.place):
                return None
            own, xmax = conn.execute(
                text(
                    "SELECT txid_snapshot_xmin(s), txid_snapshot_xmax(s) FROM txid_current_snapshot() s"
                )
            ).one()
            xmin = int(own) if kept is None else kept.xmin
            rows, recent, catalog, recent_catalog = _counts(conn, register, name, xmin)
    except DBAPIError:
        return None
    state = replace(where, xmin=xmin, rows=rows, catalog=catalog)
    return _Observed(state, recent + recent_catalog, int(xmax) - xmin)


def rehearsal_state(conn: Connection, register: RegisterMap) -> RowsState | None:
    """In the rehearsal's one snapshot (REPEATABLE READ), once it has read the register: what a
    run needs to know the register unchanged since. None elsewhere than PostgreSQL, or where it
    cannot be read."""
    observed = _observe(conn, register, None)
    return observed.state if observed is not None else None


def unchanged_since(conn: Connection, register: RegisterMap, kept: RowsState) -> bool:
    """In the run's snapshot, taken before its first write: True only if the register holds the
    very rows the rehearsal's snapshot held (see the module's description)."""
    observed = _observe(conn, register, kept)
    if observed is None:
        return False
    now = observed.state
    return (
        _lsn(now.lsn) >= _lsn(kept.lsn)
        and 0 <= observed.since < _MAX_SINCE
        and (now.rows, now.catalog, observed.recent) == (kept.rows, kept.catalog, 0)
    )
