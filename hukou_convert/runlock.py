"""Exactly one live run per database: a lock the database (or the OS) releases when the process dies.

PostgreSQL: a session advisory lock; MySQL/MariaDB: GET_LOCK on a name that includes the database;
SQLite: an flock on ``<database file>.lock``. None of them needs manual clean-up after a kill -9.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

from .db import sqlite_path
from .errors import LockHeldError

_NAME = "hukou_convert.live_run"
_PG_KEY = zlib.crc32(_NAME.encode())  # advisory locks are scoped to the current database


@contextmanager
def live_run_lock(engine: Engine, describe_holder: Callable[[], str]) -> Iterator[None]:
    backend = engine.dialect.name
    if backend == "sqlite":
        with _file_lock(engine, describe_holder):
            yield
        return
    conn = engine.connect()
    try:
        if backend == "postgresql":
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_KEY}).scalar()
        else:
            name = f"{_NAME}:{engine.url.database}"[:64]
            got = conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar()
        conn.commit()  # the lock belongs to the session, not to this transaction
        if not got:
            raise LockHeldError(describe_holder())
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


@contextmanager
def _file_lock(engine: Engine, describe_holder: Callable[[], str]) -> Iterator[None]:
    path = sqlite_path(engine)
    if path is None:  # an in-memory database is private to this process
        yield
        return
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(describe_holder()) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
