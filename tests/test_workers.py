"""``cutover --workers N`` on PostgreSQL and MariaDB: the run is cut into partitions that worker
processes claim with SELECT … FOR UPDATE SKIP LOCKED; the result is the one-process result, a
worker killed mid-run leaves its partition to the others, a killed run resumes partition by
partition, and ``hukou-convert join`` adds a worker from anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, Engine, MetaData, PrimaryKeyConstraint, Table, func, select

from hukou_convert import schema
from hukou_convert.cli import cli
from hukou_convert.conversion import CommitGate, convert_batches
from hukou_convert.cutover import run_cutover
from hukou_convert.db import make_engine, parse_url
from hukou_convert.errors import RegisterStateError
from hukou_convert.ingest import import_register
from hukou_convert.partitions import (
    as_worker,
    claim_and_convert,
    claim_partition,
    mark_done,
    run_conversion,
)
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.progress import Advance
from hukou_convert.sample import SampleOptions, write_sample
from hukou_convert.verify import verify_run

from .helpers import conversion_state
from .test_resume import _cli

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)
P = schema.run_partitions
PERSONS = 12_000


@pytest.fixture(scope="module")
def register_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("register") / "register.csv"
    write_sample(path, SampleOptions(("330211",), PERSONS, seed=11))
    return path


def _servers_only(url: str) -> None:
    if url.startswith("sqlite"):
        pytest.skip("SQLite takes one writer at a time: --workers is for the servers")


def _partitions(engine: Engine) -> list[tuple[int, str, str | None]]:
    with engine.connect() as conn:
        return [
            (int(r.partition_no), str(r.state), r.worker)
            for r in conn.execute(select(P).order_by(P.c.partition_no))
        ]


def _straight(url: str, register_csv: Path) -> str:
    """The conversion state of the same register converted by one process."""
    engine = make_engine(parse_url(url))
    import_register(engine, register_csv)
    run_cutover(engine, ZHENHAI, CUTOFF, batch_size=200)
    state = conversion_state(engine)
    engine.dispose()
    return state


def test_workers_convert_the_run_as_one_process_would(
    two_db_urls: tuple[str, str], register_csv: Path
) -> None:
    """The run's own process is slowed down here (each of its batches waits): the worker process
    beside it claims the partitions it does not hold, from the run's first commit on (not once
    the run's process has finished its first partition), and the result is one process's."""
    url, straight_url = two_db_urls
    _servers_only(url)
    expected = _straight(straight_url, register_csv)
    engine = make_engine(parse_url(url))
    import_register(engine, register_csv)

    @contextmanager
    def slow(phase: str, _total: int | None, _unit: str) -> Iterator[Advance]:
        def advance(n: int) -> None:
            # the run's own batches (the workers' progress is relayed by a thread)
            if (
                phase.startswith("转换")
                and n
                and threading.current_thread() is threading.main_thread()
            ):
                time.sleep(0.2)

        yield advance

    result = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=200, progress=slow, workers=2)
    assert result.outcome == "completed" and not result.worker_failures
    assert conversion_state(engine) == expected
    assert verify_run(engine, result.run_id).ok
    parts = _partitions(engine)
    assert len(parts) == 8 and {state for _, state, _ in parts} == {"done"}
    workers = {worker for _, _, worker in parts}
    assert len(workers) == 2  # both processes converted partitions
    with engine.connect() as conn:
        by_partition = dict(
            conn.execute(
                select(
                    schema.run_batches.c.partition_no, func.sum(schema.run_batches.c.converted)
                ).group_by(schema.run_batches.c.partition_no)
            ).all()
        )
    assert set(by_partition) == {no for no, _, _ in parts}
    assert sum(by_partition.values()) == result.converted
    B = schema.run_batches
    with engine.connect() as conn:
        own = conn.execute(
            select(func.max(B.c.committed_at)).where(B.c.partition_no == 1)
        ).scalar_one()
        others = [worker for no, _, worker in parts if no != 1 and worker != parts[0][2]]
        theirs = conn.execute(
            select(func.min(B.c.committed_at))
            .join(P, (P.c.run_id == B.c.run_id) & (P.c.partition_no == B.c.partition_no))
            .where(P.c.worker.in_(others))
        ).scalar_one()
    assert theirs < own  # the worker went on while the run's process was in its first partition
    engine.dispose()


def test_a_claimed_partition_is_skipped_by_the_next_claim(db_url: str, register_csv: Path) -> None:
    _servers_only(db_url)
    engine = make_engine(parse_url(db_url))
    import_register(engine, register_csv)
    run = _killed_after_first_commit(db_url, engine)
    with engine.connect() as first, engine.connect() as second:
        held = claim_partition(first, run)
        other = claim_partition(second, run)
        assert held is not None and other is not None
        assert other.partition_no > held.partition_no  # not the one the first holds
        first.rollback()  # released: the next claim may take it again
        third = claim_partition(first, run)
        assert third is not None and third.partition_no == held.partition_no
        second.rollback()
        first.rollback()
    engine.dispose()


CUTOVER = ("cutover", "-p", "zhenhai", "--yes", "-q", "--batch-size", "20", "--workers", "2")


def _wait(check: Any, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # tables not created yet
            pass
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError(f"no {what} within 120 s")


def _batches_by_partition(engine: Engine) -> dict[int, int]:
    B = schema.run_batches
    with engine.connect() as conn:
        return {
            int(no): int(n)
            for no, n in conn.execute(
                select(B.c.partition_no, func.count()).group_by(B.c.partition_no)
            )
        }


def _committed(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.run_batches)).scalar_one())


def _killed_after_first_commit(url: str, engine: Engine) -> str:
    """A run with workers, killed (all its processes) once its first commit is in."""
    proc = _cli(url, *CUTOVER)
    _wait(lambda: _committed(engine) >= 3, proc, "the run's first commit")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with engine.connect() as conn:
        run = conn.execute(select(schema.runs.c.run_id, schema.runs.c.status)).one()
    assert run.status == "running"
    return str(run.run_id)


def _killed_run(two_db_urls: tuple[str, str], register_csv: Path) -> tuple[str, str, Engine, str]:
    """The register converted by one process on the second database (its conversion state), and
    on the first a run with workers killed after its first commit: (url, expected state, engine,
    run id)."""
    url, straight_url = two_db_urls
    _servers_only(url)
    expected = _straight(straight_url, register_csv)
    engine = make_engine(parse_url(url))
    import_register(engine, register_csv)
    return url, expected, engine, _killed_after_first_commit(url, engine)


def _worker_pids(coordinator: int) -> list[int]:
    """The worker processes of a run: in its process group, children of its forkserver (the
    forkserver and the resource tracker are the run's own children)."""
    workers = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == coordinator:
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                state = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent, group = int(state[1]), int(state[2])
        if group == coordinator and parent != coordinator:
            workers.append(int(entry))
    return workers


def test_a_killed_worker_leaves_its_partitions_to_the_others(
    two_db_urls: tuple[str, str], register_csv: Path
) -> None:
    url, straight_url = two_db_urls
    _servers_only(url)
    expected = _straight(straight_url, register_csv)
    engine = make_engine(parse_url(url))
    import_register(engine, register_csv)
    proc = _cli(url, *CUTOVER)
    _wait(lambda: _committed(engine) >= 30 and _worker_pids(proc.pid), proc, "worker batches")
    for pid in _worker_pids(proc.pid):
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "a worker failed (hukou-worker-1 ended with exit code -9)" in out
    assert conversion_state(engine) == expected
    assert {state for _, state, _ in _partitions(engine)} == {"done"}
    assert verify_run(engine).ok
    engine.dispose()


def test_a_killed_run_resumes_partition_by_partition_and_join_helps(
    two_db_urls: tuple[str, str], register_csv: Path
) -> None:
    """Every process of a run killed; ``join`` (as from another machine) converts the pending
    partitions; the cutover run again completes the same run, converting only the rest of the
    partition its own process had started."""
    url, expected, engine, run_id = _killed_run(two_db_urls, register_csv)
    pending = [no for no, state, _ in _partitions(engine) if state == "pending"]
    assert pending  # really killed mid-run
    # the partition the run's own process was converting is no worker's to claim
    started = [no for no, state, _ in _partitions(engine) if state == "started"]
    assert started == [1]

    joined = _cli(url, "join", "-q")
    out, err = joined.communicate(timeout=300)
    assert joined.returncode == 0, err
    assert f"joined run {run_id}" in out
    assert {no for no, state, _ in _partitions(engine) if state != "done"} == {1}
    after_join = _batches_by_partition(engine)

    again = _cli(url, *CUTOVER)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resumed and completed" in out
    assert {state for _, state, _ in _partitions(engine)} == {"done"}
    resumed = _batches_by_partition(engine)
    assert resumed[1] > after_join[1]  # the rest of partition 1, resumed by the run
    del resumed[1], after_join[1]
    assert resumed == after_join  # join had converted every other partition
    assert conversion_state(engine) == expected
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.runs)).scalar_one() == 1
    assert verify_run(engine).ok
    engine.dispose()


def test_workers_on_sqlite_are_refused(sqlite_url: str, register_csv: Path) -> None:
    runner = CliRunner()
    runner.invoke(cli, ["import", str(register_csv), "-q", "--db", sqlite_url])
    result = runner.invoke(cli, [*CUTOVER, "--db", sqlite_url])
    assert result.exit_code == 2
    assert "SQLite takes one writer at a time" in result.stderr


def test_join_without_a_partitioned_run_exits_5(db_url: str, register_csv: Path) -> None:
    _servers_only(db_url)
    engine = make_engine(parse_url(db_url))
    import_register(engine, register_csv)
    run_cutover(engine, ZHENHAI, CUTOFF)
    result = CliRunner().invoke(cli, ["join", "-q", "--db", db_url])
    assert result.exit_code == 5
    assert "not an unfinished run split into partitions" in result.stderr
    engine.dispose()


def _register_state(engine: Engine) -> list[tuple[Any, ...]]:
    R = schema.register
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(R.c.record_id, R.c.hukou_type, R.c.household_category).order_by(
                    R.c.record_id
                )
            )
        ]


def _status(engine: Engine, run_id: str) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(
                select(schema.runs.c.status).where(schema.runs.c.run_id == run_id)
            ).scalar_one()
        )


def test_the_run_completes_only_once_a_partition_another_process_holds_is_done(
    two_db_urls: tuple[str, str], register_csv: Path
) -> None:
    """A killed run resumed while a ``join`` (here: a claim held on a connection of the test)
    still holds a partition: the run waits for it rather than complete without it, and converts
    it when its holder lets it go undone."""
    url, expected, engine, run_id = _killed_run(two_db_urls, register_csv)
    with engine.connect() as conn:
        holder = as_worker(conn)
        held = claim_partition(holder, run_id)
        assert held is not None
        again = _cli(url, *CUTOVER)

        def others() -> bool:
            return {no for no, st, _ in _partitions(engine) if st != "done"} == {held.partition_no}

        _wait(others, again, "every other partition done")
        time.sleep(1.0)
        assert again.poll() is None  # waiting for the held partition
        assert _status(engine, run_id) == "running"
        holder.rollback()  # its holder ends without converting it
    _out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert {state for _, state, _ in _partitions(engine)} == {"done"}
    assert conversion_state(engine) == expected
    assert verify_run(engine).ok
    engine.dispose()


def test_a_rollback_waits_for_a_worker_and_no_worker_claims_after_it(
    db_url: str, register_csv: Path, tmp_path: Path
) -> None:
    """A run whose own process died, rolled back while a worker (``join``) still converts a
    partition: the rollback waits for it and restores its records too; a worker that claims
    afterwards finds the run no longer running and converts nothing."""
    _servers_only(db_url)
    engine = make_engine(parse_url(db_url))
    import_register(engine, register_csv)
    before = _register_state(engine)
    run_id = _killed_after_first_commit(db_url, engine)
    conversion = run_conversion(engine, run_id)
    with engine.connect() as claim_conn, engine.connect() as work_conn:
        claim, work = as_worker(claim_conn), as_worker(work_conn)
        held = claim_partition(claim, run_id)
        assert held is not None
        rollback = _cli(db_url, "rollback", "--run", run_id, "--yes", "-q", "--out", str(tmp_path))
        _wait(lambda: _status(engine, run_id) == "rolling_back", rollback, "the rollback's start")
        # the worker converts its partition after the rollback began
        assert convert_batches(work, conversion, held, lambda _n: None) > 0
        mark_done(claim, run_id, held)
        claim.commit()
    _out, err = rollback.communicate(timeout=300)
    assert rollback.returncode == 0, err
    assert _status(engine, run_id) == "reverted"
    assert _register_state(engine) == before  # the worker's records restored too
    assert [no for no, state, _ in _partitions(engine) if state == "pending"]  # left pending
    assert claim_and_convert(engine, conversion, lambda _n: None) == 0
    assert _register_state(engine) == before
    engine.dispose()


def test_a_ledger_of_batches_keyed_as_before_partitions_is_refused(db_url: str) -> None:
    """An earlier hukou-convert's ledger of batches, keyed (run_id, batch_no): a run split into
    partitions numbers batches within each, so the database is refused before any run."""
    engine = make_engine(parse_url(db_url))
    schema.ensure_schema(engine)
    old = MetaData()
    Table(
        schema.run_batches.name,
        old,
        *(Column(c.name, c.type, nullable=c.nullable) for c in schema.run_batches.columns),
        PrimaryKeyConstraint("run_id", "batch_no"),
    )
    with engine.begin() as conn:
        schema.run_batches.drop(conn)
    old.create_all(engine)
    with pytest.raises(RegisterStateError, match=r"primary key is \(run_id, batch_no\)"):
        schema.ensure_schema(engine)
    engine.dispose()


def test_the_commit_gate_lets_the_workers_go_at_the_first_commit_only() -> None:
    """The workers are let go once the run's first commit is made: not while the verdict is
    not in, not when sealing refuses the run, and once only."""
    engine = make_engine(parse_url("sqlite://"))
    ready = [False]
    refuse = [True]
    calls: list[str] = []

    def seal() -> None:
        if refuse[0]:
            raise RegisterStateError("refused")

    gate = CommitGate(lambda: ready[0], seal)
    gate.when_open(lambda: calls.append("go"))
    with engine.connect() as conn:
        gate.commit(conn)  # no verdict yet: the transaction stays open
        assert calls == [] and not gate.open
        ready[0] = True
        with pytest.raises(RegisterStateError):
            gate.commit(conn)
        assert calls == [] and not gate.open
        refuse[0] = False
        gate.commit(conn)
        assert calls == ["go"] and gate.open
        gate.commit(conn)
        gate.when_open(lambda: calls.append("later"))  # already open: called at once
        assert calls == ["go", "later"]
    engine.dispose()
