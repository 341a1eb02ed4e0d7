"""Database URLs and engines: SQLite, PostgreSQL (psycopg 3) and MySQL/MariaDB (PyMySQL), one code path.

Engines are created with ``hide_parameters=True`` so that no bound value (an ID number) reaches an error
message, and URLs are only ever shown with the password hidden.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, exc, make_url, text
from sqlalchemy.engine import URL

from .errors import DatabaseError, UsageError

DEFAULT_URL = "sqlite:///hukou.db"
ENV_URL = "HUKOU_DB"
ENV_PASSWORD = "HUKOU_DB_PASSWORD"

_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def parse_url(raw: str, password: str | None = None) -> URL:
    """A SQLAlchemy URL with our drivers filled in; the password may come from elsewhere than argv."""
    try:
        url = make_url(raw)
    except exc.ArgumentError:
        raise UsageError(
            "--db: not a database URL (e.g. sqlite:///hukou.db, postgresql://user@host/db)"
        ) from None
    if url.drivername in _DRIVERS:
        url = url.set(drivername=_DRIVERS[url.drivername])
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise UsageError(
            f"--db: unsupported database {backend!r} (sqlite, postgresql, mysql, mariadb)"
        )
    if password is None:
        password = os.environ.get(ENV_PASSWORD)
    if password is not None and url.password is None and backend != "sqlite":
        url = url.set(password=password)
    if backend in ("mysql", "mariadb") and "charset" not in url.query:
        # Names may hold characters only GB18030 / 4-byte UTF-8 encodes.
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


def display_url(url: URL) -> str:
    """The URL as it may be printed, logged or written to a workbook: never with the password."""
    return url.render_as_string(hide_password=True)


def make_engine(url: URL) -> Engine:
    kwargs: dict[str, Any] = {"hide_parameters": True}
    backend = url.get_backend_name()
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["pool_pre_ping"] = True

    engine = create_engine(url, **kwargs)
    if backend == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # Durable commits, but without an fsync per page of the rollback journal.
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Sorts and temporary tables spill to a file (bounded by the page cache), not to RAM:
            # in memory they grew with the register (50 MB more at 1M persons for the report).
            cursor.execute("PRAGMA temp_store=FILE")
            cursor.close()

    if backend == "postgresql":

        @event.listens_for(engine, "connect")
        def _postgresql_settings(dbapi_connection: Any, _record: Any) -> None:
            # Text renderings of instants and dates (the register fingerprint) must not depend on
            # the session's settings (PGTZ, PGDATESTYLE): a rehearsal and the run may be started
            # from different terminals. Committed, so no rollback of the pool undoes it.
            cursor = dbapi_connection.cursor()
            cursor.execute("SET TIME ZONE 'UTC'")
            cursor.execute("SET DateStyle = 'ISO, YMD'")
            cursor.close()
            dbapi_connection.commit()

    if backend in ("mysql", "mariadb"):

        @event.listens_for(engine, "connect")
        def _mysql_settings(dbapi_connection: Any, _record: Any) -> None:
            # A legacy TIMESTAMP column is read in the session's time zone: China Standard Time,
            # as every wall-clock time the tool reads (our own instants are DATETIME in CST).
            cursor = dbapi_connection.cursor()
            cursor.execute("SET time_zone = '+08:00'")
            cursor.close()

    return engine


def refresh_statistics(engine: Engine, *tables: Table) -> None:
    """After a bulk change (an import, a conversion): PostgreSQL's planner statistics, which its
    autovacuum would refresh only later. Without them the steps that follow plan blind: verify of
    a 1M-person run took 6.6 s instead of 1.0 s. (A table the account does not own is skipped
    with a server warning. MySQL/MariaDB recalculate their own; SQLite plans well without.)"""
    if engine.dialect.name != "postgresql":
        return
    preparer = engine.dialect.identifier_preparer
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(text(f"ANALYZE {preparer.format_table(table)}"))


def sqlite_path(engine: Engine) -> str | None:
    """The file of an SQLite database, or None for other databases and in-memory ones."""
    if engine.url.get_backend_name() != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return database


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into DatabaseError with a message that names no value and no password."""
    try:
        yield
    except exc.OperationalError as err:
        raise DatabaseError(f"database error: {_first_line(err)}") from None
    except exc.InterfaceError as err:
        raise DatabaseError(f"database connection error: {_first_line(err)}") from None
    except exc.ProgrammingError as err:
        raise DatabaseError(f"database refused a statement: {_first_line(err)}") from None
    except exc.IntegrityError as err:
        raise DatabaseError(f"database integrity error: {_first_line(err)}") from None
    except exc.DataError as err:
        raise DatabaseError(f"database refused a value: {_first_line(err)}") from None


_QUOTED = re.compile(r"'[^']*'")
_DIGITS = re.compile(r"\d{6,}[\dXx]*")


def _first_line(err: exc.DBAPIError) -> str:
    """The driver's first line, with the values it quotes taken out: MySQL writes the offending
    value into the message ("Duplicate entry '3302…' for key …"), and a value may be an ID."""
    text = str(err.orig) if err.orig is not None else str(err)
    if not text.strip():
        return type(err.orig).__name__
    first = text.strip().splitlines()[0]
    return _DIGITS.sub("…", _QUOTED.sub("'…'", first))
