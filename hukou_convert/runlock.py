"""Exactly one live run per database: a lock the database (or the OS) releases when the process dies.

PostgreSQL: a session advisory lock; MySQL/MariaDB: GET_LOCK on a name that includes the database;
SQLite: an flock on ``<database file>.lock``. None of them needs manual clean-up after a kill -9.

The holder leaves a note where a refused process can read it before the holder has recorded its run
(two runs started at the same moment): in the lock file, or as the lock session's application_name on
PostgreSQL; on MariaDB the holder's server connection is named.
"""

from __future__ import annotations

import fcntl
import os
import socket
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

from .db import sqlite_path
from .errors import LockHeldError
from .instants import format_instant, now

_NAME = "hukou_convert.live_run"
_PG_KEY = zlib.crc32(_NAME.encode())  # advisory locks are scoped to the current database


HolderDescription = Callable[[str | None], str]


def _own_note() -> str:
    """Who this process is, for a process refused the lock (no personal data)."""
    since = format_instant(now())
    return f"hukou-convert pid {os.getpid()} on {socket.gethostname()[:40]} since {since}"


@contextmanager
def live_run_lock(engine: Engine, describe_holder: HolderDescription) -> Iterator[None]:
    """``describe_holder(note)`` names the holder for the refusal; ``note`` is what the lock itself
    tells of it (None when nothing)."""
    backend = engine.dialect.name
    if backend == "sqlite":
        with _file_lock(engine, describe_holder):
            yield
        return
    conn = engine.connect()
    try:
        name = f"{_NAME}:{engine.url.database}"[:64]
        if backend == "postgresql":
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_KEY}).scalar()
            if got:
                conn.execute(
                    text("SELECT set_config('application_name', :note, false)"),
                    # at most 63 bytes, not characters (a host name need not be ASCII)
                    {"note": _own_note().encode()[:63].decode("utf-8", "ignore")},
                )
        else:
            got = conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar()
        conn.commit()  # the lock belongs to the session, not to this transaction
        if not got:
            raise LockHeldError(describe_holder(_server_note(conn, name)))
        try:
            yield
        finally:
            try:
                if backend == "postgresql":
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_KEY})
                else:
                    conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})
                conn.commit()
            except Exception:  # the connection may be gone; closing it releases the lock anyway
                pass
    finally:
        conn.close()


def _server_note(conn: Connection, name: str) -> str | None:
    """The lock holder's session as the server knows it (best effort: None when it can't tell)."""
    try:
        if conn.dialect.name == "postgresql":
            note = conn.execute(
                text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                    " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                    " AND l.classid = 0 AND l.objid::bigint = :k AND l.objsubid = 1"
                    " AND l.database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                ),
                {"k": _PG_KEY},
            ).scalar()
            return str(note) if note else None
        holder = conn.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": name}).scalar()
        if holder is None:
            return None
        host = conn.execute(
            text("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = :i"), {"i": holder}
        ).scalar()
        return f"server connection {holder}" + (f" from {host}" if host else "")
    except Exception:  # naming the holder must never hide the refusal itself
        return None
    finally:
        conn.rollback()


@contextmanager
def _file_lock(engine: Engine, describe_holder: HolderDescription) -> Iterator[None]:
    path = sqlite_path(engine)
    if path is None:  # an in-memory database is private to this process
        yield
        return
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(path + ".lock", encoding="utf-8", errors="replace") as note:
                raise LockHeldError(describe_holder(note.read(200).strip() or None)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_own_note() + "\n").encode("utf-8"), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
