"""Runs converted by several workers (``cutover --workers N``; PostgreSQL and MySQL/MariaDB).

The register's key order is cut into partitions of whole batches, recorded in
``hukou_run_partitions`` in the run's first transaction. A worker — a process on this machine, or
``hukou-convert join`` on another, against the same server — claims a pending partition with
``SELECT … FOR UPDATE SKIP LOCKED`` on a connection of its own and holds that row lock while it
converts the partition on a second connection, batch by batch (each batch its own transaction with
its ledger row, as in a run of one process), then marks it done in the claiming transaction. A
worker that dies releases its claim with its connection: the partition is claimed again and resumed
from its last committed batch. The run that started the workers converts whatever they left, then
completes the run (indexes, verification's counts, the report), once no partition is pending: it
waits for those another process still holds (a ``join`` on another machine, a worker of an earlier
attempt). The partitions the run's own process converts from its first transaction on are marked
``started``, never claimable: only a resumed run (which holds the run's lock, so that process is
gone) puts them back to pending. A worker claims only while the run is ``running``; a rollback
holds every partition's row lock while it restores, so no worker converts beside it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update

from . import schema
from .conversion import KeyRange, RunConversion, convert_batches
from .db import make_engine, parse_url, translate_errors
from .errors import HukouError, RegisterStateError, UsageError
from .instants import now
from .profiles import ResolvedCutoff
from .progress import Advance
from .register import RegisterMap
from .runs import find_run, run_codes, run_profile, run_register

P = schema.run_partitions
RUNS = schema.runs
PARTITIONS_PER_WORKER = 4  # more partitions than workers: a slow one does not hold the run up


def check_workers(engine: Engine, workers: int) -> None:
    if workers > 1 and engine.dialect.name == "sqlite":
        raise UsageError(
            "--workers: SQLite takes one writer at a time; several workers need PostgreSQL or"
            " MySQL/MariaDB"
        )


def partition_ranges(
    conn: Connection, register: RegisterMap, total: int, workers: int
) -> list[KeyRange]:
    """The run's partitions: about PARTITIONS_PER_WORKER key ranges per worker, in key order
    (one key range, partition 0, for a run of one worker). An integer key is cut into equal
    spans of its values (read off its index at once; the built-in register's keys are dense);
    a text key at every n-th key (one pass over its index)."""
    if workers <= 1:
        return [KeyRange()]
    count = workers * PARTITIONS_PER_WORKER
    key = register.key_column
    bounds: list[Any]
    if register.key_is_integer:
        low, high = conn.execute(select(func.min(key), func.max(key))).one()
        if low is None:
            return [KeyRange()]
        span = int(high) - int(low) + 1
        bounds = sorted({int(low) + span * i // count - 1 for i in range(1, count)})
    else:
        per = max(1, -(-total // count))
        numbered = select(
            key.label("k"), func.row_number().over(order_by=key).label("n")
        ).subquery()
        bounds = list(
            conn.execute(
                select(numbered.c.k).where(numbered.c.n % per == 0).order_by(numbered.c.k)
            ).scalars()
        )
    ranges: list[KeyRange] = []
    after: str | None = None
    for bound in bounds:
        ranges.append(KeyRange(len(ranges) + 1, after, str(bound)))
        after = str(bound)
    ranges.append(KeyRange(len(ranges) + 1, after, None))  # the rest, to the last key
    return ranges


def store_partitions(conn: Connection, run_id: str, ranges: list[KeyRange]) -> None:
    """In the run's first transaction."""
    conn.execute(
        insert(P),
        [
            {
                "run_id": run_id,
                "partition_no": r.partition_no,
                "after_key": r.after,
                "last_key": r.upto,
                "state": "pending",
            }
            for r in ranges
        ],
    )


def mark_started(conn: Connection, run_id: str, part: KeyRange) -> None:
    """The run's own process converts ``part`` (in the run's first transaction): no worker may
    claim it, even after the first commit releases the row."""
    conn.execute(
        update(P)
        .where(P.c.run_id == run_id, P.c.partition_no == part.partition_no)
        .values(state="started", worker=worker_name())
    )


def release_started(engine: Engine, run_id: str) -> None:
    """A resumed run (holding the run's lock: the process that started these is gone): the
    partitions it left ``started`` are pending again, resumed from their last batch."""
    with engine.connect() as opened:
        conn = as_worker(opened)  # passes over the rows workers hold rather than wait for them
        conn.execute(
            update(P).where(P.c.run_id == run_id, P.c.state == "started").values(state="pending")
        )
        conn.commit()


def mark_done(conn: Connection, run_id: str, part: KeyRange) -> None:
    conn.execute(
        update(P)
        .where(P.c.run_id == run_id, P.c.partition_no == part.partition_no)
        .values(state="done", worker=worker_name(), finished_at=now())
    )


def is_partitioned(conn: Connection, run_id: str) -> bool:
    return (
        conn.execute(select(P.c.partition_no).where(P.c.run_id == run_id).limit(1)).first()
        is not None
    )


def done_partition_rows(conn: Connection, run: RunConversion) -> int:
    """The records of the run's partitions already done (a resumed run's progress so far)."""
    register = run.register
    done = 0
    for after, upto in conn.execute(
        select(P.c.after_key, P.c.last_key).where(P.c.run_id == run.run_id, P.c.state == "done")
    ):
        in_range = register.key_range(after, upto)
        done += int(
            conn.execute(
                select(func.count()).select_from(register.table).where(in_range)
            ).scalar_one()
        )
    return done


def worker_name() -> str:
    return f"{socket.gethostname()[:120]} pid {os.getpid()}"


def run_conversion(engine: Engine, run_id: str) -> RunConversion:
    """What a worker converts with: everything as the run recorded it."""
    run = find_run(engine, run_id)
    return RunConversion(
        run_id=run_id,
        codes=run_codes(engine, run_id),
        profile=run_profile(engine, run),
        cutoff=ResolvedCutoff(run.cutoff, str(run.cutoff_source or "recorded with the run")),
        batch_size=int(run.batch_size),
        register=run_register(engine, run),
    )


def claim_partition(conn: Connection, run_id: str) -> KeyRange | None:
    """The first pending partition no other worker holds, locked by ``conn``'s transaction until
    it ends (None: none left to claim)."""
    row = conn.execute(
        select(P.c.partition_no, P.c.after_key, P.c.last_key)
        .where(P.c.run_id == run_id, P.c.state == "pending")
        .order_by(P.c.partition_no)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    return None if row is None else KeyRange(int(row.partition_no), row.after_key, row.last_key)


def _is_running(conn: Connection, run_id: str) -> bool:
    return conn.execute(select(RUNS.c.status).where(RUNS.c.run_id == run_id)).scalar() == "running"


def _mysql(engine: Engine) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def as_worker(conn: Connection) -> Connection:
    """A worker's connection: on MySQL/MariaDB at READ COMMITTED, with no gap locks and no lock
    on a row it reads but does not take (two workers' neighbouring key ranges, a partition
    another process started, never wait for each other)."""
    if _mysql(conn.engine):
        return conn.execution_options(isolation_level="READ COMMITTED")
    return conn


def claim_and_convert(engine: Engine, run: RunConversion, advance: Advance) -> int:
    """Claim pending partitions of the run one after another and convert each; return when none
    is left to claim (others may still be converting theirs) or the run is no longer running (a
    rollback began). Returns the number of batches."""
    batches = 0
    with engine.connect() as claim_conn, engine.connect() as work_conn:
        claim, work = as_worker(claim_conn), as_worker(work_conn)
        while True:
            part = claim_partition(claim, run.run_id)
            # read after the claim: a rollback sets its status before it waits for every
            # partition's lock, so a claim it did not wait for sees the status it set
            if part is None or not _is_running(claim, run.run_id):
                claim.rollback()
                return batches
            batches += convert_batches(work, run, part, advance)
            mark_done(claim, run.run_id, part)
            claim.commit()


@contextlib.contextmanager
def _waiting(engine: Engine) -> Iterator[Connection]:
    """A connection whose row locks wait as long as it takes (a partition takes minutes) and
    read what was committed last."""
    with engine.connect() as conn:
        if not _mysql(engine):
            yield conn
            return
        conn = as_worker(conn)
        conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 86400")
        try:
            yield conn
        finally:
            conn.rollback()
            conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = DEFAULT")


def _wait_for_held(engine: Engine, run_id: str) -> bool:
    """Wait until no process holds a pending partition of the run; False when none is pending
    (or the run stopped running)."""
    with _waiting(engine) as conn:
        pending = P.c.run_id == run_id, P.c.state == "pending"
        if not _is_running(conn, run_id) or (
            conn.execute(select(P.c.partition_no).where(*pending).limit(1)).first() is None
        ):
            conn.rollback()
            return False
        conn.execute(select(P.c.partition_no).where(*pending).with_for_update()).all()
        conn.rollback()
        return True


def convert_pending(engine: Engine, run: RunConversion, advance: Advance) -> int:
    """Every partition still pending converted here: those no one holds at once, those another
    process holds (a ``join``, a worker of an earlier attempt) waited for, and converted here if
    it let them go undone. The run completes only after this."""
    batches = claim_and_convert(engine, run, advance)
    while _wait_for_held(engine, run.run_id):
        batches += claim_and_convert(engine, run, advance)
    return batches


@contextlib.contextmanager
def partitions_held(engine: Engine, run_id: str) -> Iterator[None]:
    """A rollback: every partition of the run locked (waiting for the workers converting one)
    and held until the rollback ends, so no worker claims one beside it."""
    if engine.dialect.name == "sqlite":  # never split; a reader would block SQLite's writer
        yield
        return
    with _waiting(engine) as conn:
        query = select(P.c.partition_no).where(P.c.run_id == run_id).with_for_update()
        if not conn.execute(query).all():  # a run not split: nothing to hold
            conn.rollback()
            yield
            return
        try:
            yield
        finally:
            conn.rollback()


@dataclass
class WorkersReport:
    batches: int = 0
    failures: list[str] = field(default_factory=list)  # what a worker process that failed said


class Workers:
    """``workers - 1`` worker processes besides this one, started early and waiting until they are
    let go (:meth:`let_go`, at the run's first commit, which must come before any of theirs;
    :meth:`convert` at the latest) to claim partitions. They are started by a thread of their own:
    a process takes a third of a second to start (the server it is forked from imports the
    tool), which this process spends converting meanwhile. Each sends its progress on a pipe of
    its own: a worker killed in the middle of a message spoils only its own pipe (a queue shared
    by all would be left locked)."""

    def __init__(self, engine: Engine, run_id: str, workers: int, advance: Advance) -> None:
        self._engine = engine
        self._advance = advance
        self.report = WorkersReport()
        self._go: list[Any] = []
        # forkserver: a child starts clean, never with a copy of this process's connections
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        url = engine.url.render_as_string(hide_password=False)  # to the children in memory only
        # to each child, a pipe of its own each way: "go", and its progress back (no shared
        # Event or Queue: a process killed inside one leaves it locked for every other)
        self._children: list[tuple[Any, Any, Any]] = []  # process, its go, its progress end
        self._pipes: list[Any] = []
        for i in range(1, workers):
            go_in, go_out = context.Pipe(duplex=False)
            progress_in, progress_out = context.Pipe(duplex=False)
            child = context.Process(
                target=_worker,
                args=(url, run_id, go_in, progress_out),
                name=f"hukou-worker-{i}",
                daemon=True,
            )
            self._children.append((child, go_in, progress_out))
            self._go.append(go_out)
            self._pipes.append(progress_in)
        self._relaying = threading.Thread(target=self._relay, name="hukou-workers", daemon=True)
        self._starting = threading.Thread(
            target=self._start, name="hukou-workers-start", daemon=True
        )
        self._start_error: BaseException | None = None
        self._lock = threading.Lock()
        self._started = False  # every child started (or the starting failed)
        self._go_asked = False  # let go: sent once they have started
        self._gone = False  # "go" sent

    def __enter__(self) -> Workers:
        self._starting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._starting.join()  # the children that were to start have started
        for go in self._go:
            go.close()  # a child still waiting to go ends
        for child, _, _ in self._children:
            if child.pid is None:  # not started: the starting failed before it
                continue
            if child.is_alive() and child.exitcode is None and exc[0] is not None:
                child.terminate()  # its open batch rolls back with its connection
            child.join()
        if self._relaying.ident is not None:
            self._relaying.join()

    def _start(self) -> None:
        try:
            for child, go_in, progress_out in self._children:
                child.start()
                go_in.close()  # the child's ends: its end of file is the child's end
                progress_out.close()
            self._relaying.start()
        except BaseException as err:  # raised in the run's thread, by convert()
            self._start_error = err
        with self._lock:
            self._started = True
            go = self._go_asked and self._start_error is None
        if go:
            self._send_go()

    def let_go(self) -> None:
        """The run's first commit is made: the workers may claim partitions, now if they have
        started, as soon as they have if not (without waiting for them here)."""
        with self._lock:
            self._go_asked = True
            go = self._started and self._start_error is None
        if go:
            self._send_go()

    def _send_go(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
            for go in self._go:
                with contextlib.suppress(OSError):  # a child that died already
                    go.send(True)

    def _relay(self) -> None:
        open_pipes: list[Any] = list(self._pipes)
        while open_pipes:
            ready: list[Any] = multiprocessing.connection.wait(open_pipes)
            for pipe in ready:
                try:
                    message = pipe.recv()
                except (EOFError, OSError):
                    open_pipes.remove(pipe)
                    pipe.close()
                    continue
                if isinstance(message, int):
                    self._advance(message)
                else:
                    self.report.failures.append(str(message))

    def convert(self, run: RunConversion) -> WorkersReport:
        """The run's pending partitions, converted by every worker, this process included; what
        a worker that failed left pending is converted here once they have all ended."""
        self._starting.join()
        if self._start_error is not None:
            raise self._start_error
        self.let_go()
        self.report.batches += claim_and_convert(self._engine, run, self._advance)
        for child, _, _ in self._children:
            child.join()
        self._relaying.join()  # every pipe read to its end
        for child, _, _ in self._children:
            if child.exitcode != 0 and not any(child.name in f for f in self.report.failures):
                self.report.failures.append(f"{child.name} ended with exit code {child.exitcode}")
        # a partition whose worker died, released with its connection, or one that another
        # process still holds: converted here, or waited for
        self.report.batches += convert_pending(self._engine, run, self._advance)
        return self.report


def convert_with_workers(
    engine: Engine, run: RunConversion, workers: int, advance: Advance
) -> WorkersReport:
    """The run's pending partitions converted by ``workers`` processes: this one and
    ``workers - 1`` started here, each on connections of its own."""
    with Workers(engine, run.run_id, workers, advance) as started:
        return started.convert(run)


def _worker(url: str, run_id: str, go: Any, messages: Any) -> None:
    """A worker process: once let go (``go``: a pipe's end; its end of file: the run ended before
    its first commit), claims and converts partitions until none is left; progress and failures
    go back through ``messages`` (a failure never names a value: HukouError messages do not)."""
    logging.getLogger("sqlalchemy").addHandler(logging.NullHandler())
    name = multiprocessing.current_process().name
    engine = make_engine(parse_url(url))
    try:
        go.recv()
    except EOFError:
        engine.dispose()
        return
    try:
        with translate_errors():
            claim_and_convert(engine, run_conversion(engine, run_id), messages.send)
    except HukouError as err:
        messages.send(f"{name}: {err.message()}")
        raise SystemExit(1) from None
    except Exception as err:
        messages.send(f"{name}: {type(err).__name__}")
        raise SystemExit(1) from None
    finally:
        messages.close()
        engine.dispose()


@dataclass
class JoinResult:
    run_id: str
    batches: int


def join_run(engine: Engine, run_id: str | None, advance: Advance) -> JoinResult:
    """``hukou-convert join``: one more worker for an unfinished run split into partitions,
    started by ``cutover --workers`` (on this machine or another); returns when no partition is
    left to claim. The run that started the workers completes the run."""
    with translate_errors():
        run = find_run(engine, run_id)
        with engine.connect() as conn:
            partitioned = is_partitioned(conn, str(run.run_id))
        if run.status != "running" or not partitioned:
            raise RegisterStateError(
                f"run {run.run_id} is not an unfinished run split into partitions (status"
                f" {run.status}): start one with 'hukou-convert cutover --workers N'"
            )
        batches = claim_and_convert(engine, run_conversion(engine, str(run.run_id)), advance)
    return JoinResult(str(run.run_id), batches)
