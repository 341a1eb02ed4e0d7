"""The built-in schema: the register, in-flight applications, runs and their ledgers, and the history.

``hukou_type_history`` is a deliverable in its own right: other departments query it with SQL for years.
Its rows are never updated except ``reverted_at``, and never deleted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    exc,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeDecorator, TypeEngine

from .errors import RegisterStateError
from .instants import CST, to_cst

SCHEMA_VERSION = 1


class Instant(TypeDecorator[datetime]):
    """A timezone-aware instant.

    PostgreSQL stores it as ``timestamp with time zone``. SQLite and MySQL/MariaDB have no such type:
    there it is stored as China Standard Time (+08:00) wall-clock, the time every policy text and every
    department uses, and read back as an aware +08:00 datetime.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime bound to an Instant column")
        if dialect.name == "postgresql":
            return value
        return to_cst(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=CST)
        return value.astimezone(CST)


Key = BigInteger().with_variant(Integer, "sqlite")


def Code(length: int) -> TypeEngine[str]:
    """An identifier or code (ID number, household number, division code): ASCII, compared and
    sorted byte for byte. On PostgreSQL in the "C" collation whatever the database's default (a
    libc or ICU locale, "C.UTF-8" included, sorts through the locale's comparison): the
    register's indexes on them build faster (1M persons, built after an import: the ID numbers'
    0.93-1.22 -> 0.66-0.82 s, the household numbers' 0.80-0.90 -> 0.55-0.67 s), and a search of
    ID numbers by prefix uses their index. A legacy table's column in a collation of its own
    cannot be compared with one of these as it is: such a comparison names the collation
    (rollback). Elsewhere they already compare byte for byte: SQLite's BINARY, MySQL/MariaDB's
    binary collations below."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


metadata = MetaData()
_mysql: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
    # Codes and statuses compare exactly, as on SQLite and PostgreSQL: MySQL's default collations
    # would take 'a1' for 'A1' and convert a value the code table does not map.
    "mysql_collate": "utf8mb4_bin",
    "mariadb_collate": "utf8mb4_nopad_bin",
}

register = Table(
    "hukou_register",
    metadata,
    Column("record_id", Key, primary_key=True, autoincrement=True),
    Column("id_number", Code(32)),
    Column("name", String(100)),
    Column("sex", String(4)),
    Column("birth_date", Date),
    Column("household_id", Code(40)),
    Column("hukou_type", String(40)),
    Column("household_category", String(20)),
    Column("division_code", Code(20)),
    Column("status", String(20)),
    Column("updated_at", Instant),
    Column("address", String(200)),
    Column("police_station", String(100)),
    Column("relation", String(20)),
    Column("import_id", Integer),
    Column("source_line", Integer),
    Index("ix_hukou_register_id_number", "id_number"),
    Index("ix_hukou_register_household_id", "household_id"),
    # PostgreSQL rewrites every updated row: with half of each page free the cutover's UPDATE stays
    # on the page and writes no index entries (HOT), 4-5x faster (FLOORS.md)
    postgresql_with={"fillfactor": 50},
    **_mysql,
)

applications = Table(
    "hukou_applications",
    metadata,
    Column("application_id", String(64), primary_key=True),
    Column("id_number", Code(32)),
    Column("kind", String(10)),
    Column("applied_at", Instant),
    Column("status", String(10)),
    Column("approved_at", Instant),
    # What the cutover did with it, written by the run that decided (never decided twice).
    Column("outcome", String(20)),
    Column("outcome_run_id", String(40)),
    Column("outcome_record_id", BigInteger),
    Column("outcome_record_key", String(64)),  # the record's key when the register's is text
    Column("outcome_from_code", String(40)),
    Column("outcome_to_code", String(40)),
    # set when the deciding run was rolled back: the application is open again for the next run
    Column("outcome_reverted_at", Instant),
    Column("import_id", Integer),
    Column("source_line", Integer),
    Index("ix_hukou_applications_id_number", "id_number"),
    **_mysql,
)

imports = Table(
    "hukou_imports",
    metadata,
    Column("import_id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(20), nullable=False),
    Column("file_name", String(400), nullable=False),
    Column("file_sha256", String(64), nullable=False),
    Column("encoding", String(20)),
    Column("mode", String(10), nullable=False),
    Column("loaded", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("imported_at", Instant, nullable=False),
    **_mysql,
)

runs = Table(
    "hukou_runs",
    metadata,
    Column("run_id", String(40), primary_key=True),
    Column("profile", String(100), nullable=False),
    Column("profile_fingerprint", String(32), nullable=False),
    Column("scope", String(400), nullable=False),
    Column("active_statuses", String(200), nullable=False),
    Column("code_table", Text, nullable=False),  # JSON: the table the run converted with
    Column("profile_json", Text),  # JSON: every other field of the profile (file profiles too)
    Column("cutoff", Instant, nullable=False),
    Column("cutoff_source", String(200)),
    Column("register_sha256", String(64)),  # the register as read before the first write
    # JSON: the mapping of a legacy register converted in place (NULL: the built-in register)
    Column("register_mapping", Text),
    # running -> completed -> (rolling_back ->) reverted
    Column("status", String(16), nullable=False),
    Column("batch_size", Integer, nullable=False),
    Column("started_at", Instant, nullable=False),
    Column("finished_at", Instant),
    Column("converted", BigInteger),
    Column("reverted_at", Instant),
    Column("rollback_skipped", BigInteger),  # records changed since the cutover, left converted
    Column("tool_version", String(20)),
    Column("database_url", String(400)),
    Column("host", String(100)),
    Column("pid", Integer),
    **_mysql,
)

# The census the run took before its first write: verify compares against it.
run_census = Table(
    "hukou_run_census",
    metadata,
    Column("run_id", String(40), nullable=False),
    Column("line", Integer, nullable=False),
    Column("in_scope", Integer, nullable=False),
    Column("active", Integer, nullable=False),
    Column("raw_code", String(40)),
    Column("category_label", String(20)),
    Column("records", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "line"),
    **_mysql,
)

# One row per committed batch, written in the same transaction as the batch: the checkpoint. A run
# split into partitions numbers its batches within each partition (0: a run not split).
run_batches = Table(
    "hukou_run_batches",
    metadata,
    Column("run_id", String(40), nullable=False),
    Column("partition_no", Integer, nullable=False, server_default="0"),
    Column("batch_no", Integer, nullable=False),
    Column("first_key", String(64)),
    Column("last_key", String(64)),
    Column("converted", Integer, nullable=False),
    Column("committed_at", Instant, nullable=False),
    PrimaryKeyConstraint("run_id", "partition_no", "batch_no"),
    **_mysql,
)

# The key ranges of a run converted by several workers (``--workers``): a worker claims a pending
# one with SELECT … FOR UPDATE SKIP LOCKED and holds the row lock while it converts it, so a
# worker that dies releases its partition to the others, which resume it from its last batch.
run_partitions = Table(
    "hukou_run_partitions",
    metadata,
    Column("run_id", String(40), nullable=False),
    Column("partition_no", Integer, nullable=False),  # 1, 2, … in key order
    Column("after_key", String(64)),  # keys after this one (NULL: from the first)
    Column("last_key", String(64)),  # up to this one (NULL: to the last)
    # pending | started (by the run's own process, never claimed) | done
    Column("state", String(10), nullable=False),
    Column("worker", String(160)),  # host and pid of the worker that started or finished it
    Column("finished_at", Instant),
    PrimaryKeyConstraint("run_id", "partition_no"),
    **_mysql,
)

# Records a run held back for manual review (profile ``hold_back``): held, or released later and
# converted by the same run once their exception was resolved.
run_holds = Table(
    "hukou_run_holds",
    metadata,
    Column("hold_id", Key, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    # The record's key: record_id when the register's key is an integer (the built-in register),
    # record_key when it is text (a legacy table converted in place). So in every table of ours.
    Column("record_id", BigInteger),
    Column("record_key", String(64)),
    Column("codes", String(400), nullable=False),  # the exception codes that held it
    # held | released (converted once resolved) | dropped (resolved, but no longer to convert)
    Column("state", String(10), nullable=False),
    Column("nature", String(24)),  # as counted by the census when the record was held
    Column("category", String(12)),
    Column("released_at", Instant),
    Index("ux_hukou_run_holds_record", "run_id", "record_id", unique=True),
    Index("ux_hukou_run_holds_key", "run_id", "record_key", unique=True),
    **_mysql,
)

# The exceptions a completed run reported (register checks, in-flight business, the freeze), written
# after its commit: the report of a finished run is written again from what the run found, not from
# the register as it is later. Row 0 of a run marks "recorded" (a run may find nothing).
run_findings = Table(
    "hukou_run_findings",
    metadata,
    Column("run_id", String(40), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("code", String(40), nullable=False),
    Column("category", String(20), nullable=False),
    Column("severity", String(10), nullable=False),
    Column("record_id", BigInteger),
    Column("record_key", String(64)),
    Column("id_number", Code(32)),
    Column("name", String(100)),
    Column("explanation", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("upgraded_id", String(32)),
    PrimaryKeyConstraint("run_id", "seq"),
    **_mysql,
)

# One row per committed rollback batch, in the same transaction as the restore.
rollback_batches = Table(
    "hukou_rollback_batches",
    metadata,
    Column("run_id", String(40), nullable=False),
    Column("batch_no", Integer, nullable=False),
    Column("last_key", String(64)),
    Column("restored", Integer, nullable=False),
    Column("committed_at", Instant, nullable=False),
    PrimaryKeyConstraint("run_id", "batch_no"),
    **_mysql,
)

history = Table(
    "hukou_type_history",
    metadata,
    Column("history_id", Key, primary_key=True, autoincrement=True),
    Column("id_number", Code(32)),
    Column("original_code", String(40)),
    Column("original_nature", String(24), nullable=False),
    Column("household_category", String(12)),
    Column("original_category_label", String(20)),  # 户别 exactly as it was: rollback restores it
    Column("new_type", String(12), nullable=False),
    Column("effective_at", Instant, nullable=False),
    Column("converted_at", Instant, nullable=False),
    Column("run_id", String(40), nullable=False),
    Column("record_id", BigInteger),  # the register's key: record_id if integer, else record_key
    Column("record_key", String(64)),
    Column("division_code", Code(20)),
    Column("application_id", String(64)),
    Column("reverted_at", Instant),
    Index("ix_hukou_type_history_id_number", "id_number"),
    Index("ix_hukou_type_history_run_record", "run_id", "record_id"),
    **_mysql,
)


# The history's indexes serve look-ups, rollback and verification, not the conversion, which checks
# each batch by its statements' own counts. A cutover into an empty history builds them once after
# its last batch instead of maintaining them row by row (more than half the batches' time on
# SQLite); on PostgreSQL its primary key too (a fifth of the INSERTs' time). Elsewhere the key
# stays: SQLite's is the rowid, InnoDB's the table itself.
HISTORY_INDEXES = tuple(sorted(history.indexes, key=lambda ix: str(ix.name)))
_HISTORY_KEY = f"{history.name}_pkey"


class Deferral(NamedTuple):
    deferred: bool  # the history is empty and without its indexes: they are built after
    drops: int  # the indexes (and key) dropped, each in a transaction of its own


def defer_history_indexes(engine: Engine) -> Deferral:
    """Drop the history's indexes (and on PostgreSQL its primary key) if it holds no row yet (its
    own DDL, no data work), so that :func:`build_history_indexes` builds them after the
    conversion. Only an optimisation: an account without the right to drop them, or a session
    holding the table (a look-up left open), keeps them, after waiting a few seconds at most."""
    with engine.connect() as conn:
        if conn.execute(select(history.c.history_id).limit(1)).first() is not None:
            return Deferral(False, 0)
    inspector = inspect(engine)
    present = {ix["name"] for ix in inspector.get_indexes(history.name)}
    drops: list[Any] = [index.drop for index in HISTORY_INDEXES if index.name in present]
    if (
        engine.dialect.name == "postgresql"
        and inspector.get_pk_constraint(history.name)["name"] == _HISTORY_KEY
    ):
        drops.append(
            lambda conn: conn.execute(
                text(f"ALTER TABLE {history.name} DROP CONSTRAINT {_HISTORY_KEY}")
            )
        )
    for dropped, drop in enumerate(drops):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                elif conn.dialect.name in ("mysql", "mariadb"):
                    conn.execute(text("SET SESSION lock_wait_timeout = 5"))
                drop(conn)
                if conn.dialect.name in ("mysql", "mariadb"):
                    conn.execute(text("SET SESSION lock_wait_timeout = DEFAULT"))
        except exc.DBAPIError:
            # those dropped so far are built again after the conversion
            return Deferral(False, dropped)
    return Deferral(True, len(drops))


def build_history_indexes(engine: Engine) -> list[str]:
    """Create the history indexes (and primary key) that are missing (after a deferred
    conversion, or a run killed before it built them); the names of those created."""
    built = []
    if (
        engine.dialect.name == "postgresql"
        and not inspect(engine).get_pk_constraint(history.name)["constrained_columns"]
    ):
        with engine.begin() as conn:
            conn.execute(
                text(
                    f"ALTER TABLE {history.name} ADD CONSTRAINT {_HISTORY_KEY}"
                    " PRIMARY KEY (history_id)"
                )
            )
        built.append(_HISTORY_KEY)
    for index in HISTORY_INDEXES:
        if index.name in {ix["name"] for ix in inspect(engine).get_indexes(history.name)}:
            continue
        try:
            index.create(engine)
        except exc.DBAPIError:
            # a killed process's CREATE INDEX that the server finished meanwhile (MariaDB goes
            # on with the statement of a client that died): there now, nothing to do
            if index.name in {ix["name"] for ix in inspect(engine).get_indexes(history.name)}:
                continue
            raise
        built.append(str(index.name))
    return built


# Divisions imported with ``hukou-convert divisions import``: overlaid on the table the tool ships.
divisions = Table(
    "hukou_divisions",
    metadata,
    Column("code", String(12), primary_key=True),  # 12 digits
    Column("name", String(100), nullable=False),
    Column("level", Integer, nullable=False),  # 2 city, 3 county, 4 township, 5 village-level
    Column("parent_code", String(12)),
    Column("urban_rural_code", String(3)),  # 1xx urban, 2xx rural; village level only
    Column("source", String(400)),  # the file it was imported from, and its SHA-256
    **_mysql,
)


def ensure_schema(engine: Engine) -> None:
    """Create the tables that are missing. Each table is its own DDL statement and commit, so MySQL's
    implicit commits around DDL cannot leave a data change half-done: no data is written here."""
    metadata.create_all(engine, checkfirst=True)
    inspector = inspect(engine)
    missing = {
        table.name: sorted(
            {c.name for c in table.columns} - {c["name"] for c in inspector.get_columns(table.name)}
        )
        for table in metadata.sorted_tables
    }
    missing = {name: columns for name, columns in missing.items() if columns}
    if missing:
        listed = "; ".join(f"{name}: {', '.join(columns)}" for name, columns in missing.items())
        raise RegisterStateError(
            "this database's hukou tables were created by an earlier hukou-convert and lack"
            f" columns ({listed}): rehearse on a fresh database, or add them"
        )
    for table in metadata.sorted_tables:
        ours = [c.name for c in table.primary_key.columns]
        # none: a key a first cutover defers (the history's, on PostgreSQL) until its end
        theirs = inspector.get_pk_constraint(table.name).get("constrained_columns") or []
        if theirs and theirs != ours:
            raise RegisterStateError(
                f"this database's {table.name} was created by an earlier hukou-convert: its"
                f" primary key is ({', '.join(theirs)}), not ({', '.join(ours)}); rehearse on a"
                " fresh database"
            )


def has_register(engine: Engine) -> bool:
    return inspect(engine).has_table(register.name)


def missing_tables(engine: Engine) -> list[str]:
    present = set(inspect(engine).get_table_names())
    return [t.name for t in metadata.sorted_tables if t.name not in present]
