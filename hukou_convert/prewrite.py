"""The register as it was before the run's first write: its census, its fingerprint and, with a
rehearsal's plan, its records compared with the plan's, read on a connection of its own in a thread
while the run converts.

The run does not wait for this reading to start converting; it waits for its verdict before its
first commit: the conversion goes on in one open transaction until then (an unmapped code, a
register that differs from the plan: rolled back, nothing written). The verdict needs the census;
held to a plan, every record too, read beside the conversion. Without a plan the fingerprint waits
for the conversion's last commit and is then read from the same snapshot, while the register is
back in service: read beside the conversion it would only slow it down (two cores, measured).
The reading never sees the run's own writes: PostgreSQL and MySQL/MariaDB read a snapshot taken
before them (REPEATABLE READ); on SQLite, where a reader would stop the writer (outside WAL mode
no writer may spill or commit while a reader holds the file, and WAL mode, measured, makes the
conversion 40 % slower), the reading reads a copy of the database file taken under a read lock.
Held to a plan on the very SQLite file the rehearsal read, unchanged since (:mod:`sqlitefile`),
the run reads nothing: :class:`PlanReading` gives it the plan's census and fingerprint. Held to a
plan on PostgreSQL, the reading takes the census and then reads no record again when the snapshot
holds the very rows the rehearsal's did (:mod:`pgrows`): the fingerprint is then the plan's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from sqlalchemy import Connection, Engine

from .census import Census, take_census
from .db import make_engine, sqlite_path
from .fingerprint import register_fingerprint
from .pgrows import unchanged_since
from .plan import Difference, Plan, compare_records
from .profiles import Profile
from .progress import Progress
from .register import RegisterMap


@dataclass
class RegisterReading:
    census: Census  # as read: before the run applied any application
    fingerprint: str
    record_differences: list[Difference] = field(default_factory=list)  # the first few shown
    record_difference_count: int = 0
    # held to a plan on PostgreSQL: the very rows the rehearsal read, not read again (:mod:`pgrows`)
    unchanged_rows: bool = False


class ReadingStopped(Exception):
    """The run stopped (an error, Ctrl-C) before the reading finished: nothing to report."""


def read_register(
    conn: Connection,
    register: RegisterMap,
    profile: Profile,
    plan: Plan | None,
    progress: Progress,
    stop: threading.Event | None = None,
    on_census: Callable[[Census], None] = lambda _census: None,
) -> RegisterReading:
    """Census, then fingerprint (compared with the plan's records when given), in one snapshot.
    ``on_census`` receives the census as soon as it is taken."""
    census = take_census(conn, register, profile)
    on_census(census)
    with progress("指纹 fingerprint", census.total, "行") as bar:

        def advance(n: int) -> None:
            if stop is not None and stop.is_set():
                raise ReadingStopped()
            bar(n)

        if plan is None:
            return RegisterReading(census, register_fingerprint(conn, register, advance))
        kept = plan.postgresql_rows(register)
        if kept is not None and unchanged_since(conn, register, kept):
            bar(census.total)
            return RegisterReading(census, str(plan.data["register_sha256"]), unchanged_rows=True)
        compared = compare_records(conn, register, plan, advance)
    return RegisterReading(census, compared.fingerprint, compared.shown, compared.count)


class ReadingBeside:
    """``with ReadingBeside(engine, …) as reading:`` the register read in a thread from a snapshot
    taken before the caller's first commit; ``reading.census_taken()`` / ``reading.done()``
    without waiting, ``reading.census()`` / ``reading.result()`` waiting. Without a plan the
    fingerprint is read once the caller says it has finished converting: ``reading.finish()``.

    The caller must not commit a write to the register before ``census()`` returned: that is what
    makes the snapshot one of the register before the run."""

    def __init__(
        self,
        engine: Engine,
        register: RegisterMap,
        profile: Profile,
        plan: Plan | None,
        progress: Progress,
    ) -> None:
        self._engine = engine
        self._args = (register, profile, plan, progress)
        self._future: Future[RegisterReading] = Future()
        self._census: Future[Census] = Future()
        self._stop = threading.Event()
        self._converted = threading.Event()  # the caller's last commit is done
        self._thread: threading.Thread | None = None
        self._copy: Path | None = None
        self._source: Engine | None = None

    def __enter__(self) -> ReadingBeside:
        source = self._snapshot_source()
        if source is None:
            # nothing to read beside the writer (an in-memory database, no room for a copy):
            # read now, before the first write
            self._read(self._engine)
            return self
        self._source = source
        self._thread = threading.Thread(
            target=self._read, args=(source,), name="hukou-read", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._converted.set()
        if self._thread is not None:
            self._thread.join()
        if self._source is not None and self._source is not self._engine:
            self._source.dispose()
        if self._copy is not None:
            _remove(self._copy)

    def census_taken(self) -> bool:
        return self._census.done()

    def census(self) -> Census:
        return self._census.result()

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> RegisterReading:
        return self._future.result()

    def release(self) -> None:
        """The conversion is over: the fingerprint may be read now, beside what follows."""
        self._converted.set()

    def finish(self) -> RegisterReading:
        """The whole reading (its fingerprint read now if not yet)."""
        self.release()
        return self.result()

    def _census_taken(self, census: Census) -> None:
        self._census.set_result(census)
        if self._args[2] is None and self._thread is not None:
            self._converted.wait()
            if self._stop.is_set():
                raise ReadingStopped()

    def _read(self, source: Engine) -> None:
        register, profile, plan, progress = self._args
        try:
            with source.connect() as conn:
                if conn.dialect.name != "sqlite":
                    # one snapshot for the census and every row, taken before the run's writes
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                try:
                    reading = read_register(
                        conn, register, profile, plan, progress, self._stop, self._census_taken
                    )
                finally:
                    conn.rollback()
        except BaseException as err:  # handed to the writer's thread
            if not self._census.done():
                self._census.set_exception(err)
            self._future.set_exception(err)
        else:
            self._future.set_result(reading)

    def _snapshot_source(self) -> Engine | None:
        if self._engine.dialect.name != "sqlite":
            return self._engine
        path = sqlite_path(self._engine)
        if path is None:
            return None
        copy = Path(path + ".hukou-read")
        try:
            _copy_sqlite(path, copy)
        except (OSError, sqlite3.Error):  # read before converting instead
            _remove(copy)
            return None
        self._copy = copy
        return make_engine(self._engine.url.set(database=str(copy)))


class PlanReading:
    """The reading of a register known to be the one a rehearsal read (:mod:`sqlitefile`): the
    census the rehearsal took and its fingerprint, nothing read. The same calls as
    :class:`ReadingBeside`."""

    def __init__(self, census: Census, fingerprint: str) -> None:
        self._reading = RegisterReading(census, fingerprint)

    def __enter__(self) -> PlanReading:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def census_taken(self) -> bool:
        return True

    def census(self) -> Census:
        return self._reading.census

    def done(self) -> bool:
        return True

    def result(self) -> RegisterReading:
        return self._reading

    def release(self) -> None:
        return None

    def finish(self) -> RegisterReading:
        return self._reading


def _copy_sqlite(path: str, copy: Path) -> None:
    """The database file as it is now, copied under a read lock (no writer commits meanwhile)."""
    _remove(copy)
    # it holds every ID number: readable by the operator only (SQLite gives its journal the same)
    os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    source = sqlite3.connect(path, timeout=60)
    try:
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the read lock
        mode = str(source.execute("PRAGMA journal_mode").fetchone()[0])
        if mode.lower() == "wal":  # committed pages may still be in the -wal file
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                target.close()
        else:
            shutil.copyfile(path, copy)
    finally:
        source.rollback()
        source.close()


def _remove(copy: Path) -> None:
    for leftover in (copy, *(Path(f"{copy}-{end}") for end in ("journal", "wal", "shm"))):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)
