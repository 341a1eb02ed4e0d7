"""The state of an SQLite database file: how a real run held to a rehearsal's plan knows that the
file is the one the rehearsal read, byte for byte, without reading the register again.

Outside WAL mode SQLite adds one to the file change counter in the database header (bytes 24-27)
whenever a connection writes a transaction's changes to the file (with every commit, but in
exclusive locking mode once per lock held): that is how its own connections know whether the
pages they cached are still good. Beside the counter, the file's size and modification time: a file
changed other than by SQLite, or another file put in its place, changes them. A rehearsal keeps the
state it found before and after reading (the same, or it keeps none: its reads are not one
snapshot on SQLite); the run compares it before its own first write and accounts for the commits
it makes itself before the closed window (the history's indexes deferred).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from .db import sqlite_path

_MAGIC = b"SQLite format 3\x00"
_LEGACY = 1  # header bytes 18-19, the file format's write and read versions: 2 in WAL mode


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    change_counter: int

    def as_json(self) -> dict[str, int]:
        return {
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "change_counter": self.change_counter,
        }

    @classmethod
    def from_json(cls, data: Any) -> FileState | None:
        """The state a plan kept (None: it kept none, or not in this form)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(int(data["size"]), int(data["mtime_ns"]), int(data["change_counter"]))
        except (KeyError, TypeError, ValueError):
            return None


def open_database(engine: Engine) -> int | None:
    """A descriptor of the database file to read its state through while this process holds a
    lock on it: close it only once no connection of the process holds one, because closing any
    descriptor of a file releases every POSIX lock the process holds on it, SQLite's included
    (SQLite keeps its own descriptors open for that reason)."""
    path = sqlite_path(engine)
    if path is None:
        return None
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def file_state(engine: Engine, *, writing: bool = False, fd: int | None = None) -> FileState | None:
    """The database file's state; None for another database, an in-memory one, a file in WAL
    mode (SQLite keeps no change counter there) or one that cannot be read. A rollback journal or
    a WAL beside the file means a write may be under way (or, in the TRUNCATE and PERSIST journal
    modes, that the journal is always there): None, unless ``writing`` (the caller holds the
    write lock and the journal is its own, its transaction not yet written to the file). While
    this process holds a lock on the file, read through ``fd`` (:func:`open_database`)."""
    path = sqlite_path(engine)
    if path is None:
        return None
    if os.path.exists(f"{path}-wal") or (not writing and os.path.exists(f"{path}-journal")):
        return None
    try:
        if fd is not None:
            stat, header = os.fstat(fd), os.pread(fd, 100, 0)
        else:
            with open(path, "rb") as fh:
                stat, header = os.fstat(fh.fileno()), fh.read(100)
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(_MAGIC) or header[18:20] != bytes([_LEGACY] * 2):
        return None
    return FileState(stat.st_size, stat.st_mtime_ns, int.from_bytes(header[24:28], "big"))
