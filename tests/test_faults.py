"""Faults on the night of the cutover, on real databases (SQLite, PostgreSQL, MariaDB): kill -9 at
twenty random points in a row of a cutover, a rollback and an import (real processes), resuming each
time; the run's database connection closed by the server mid-batch; a full disk or an unwritable
output directory while the workbook is written; a failure while the schema or the run record is
written.

Kill points come from a seeded random generator (``HUKOU_FAULT_SEED`` to try others): a number of
new batches to wait for (0 = a random delay after the start, before or during the census), then a
random few milliseconds more, so the kill lands inside a batch's transaction as often as between two.
After every kill the database must hold nothing half-written; the final state must equal that of an
uninterrupted run on a second database, record for record (``conversion_state``).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from hukou_convert import schema
from hukou_convert.codes import RESIDENT_TYPE
from hukou_convert.cutover import run_cutover
from hukou_convert.db import make_engine, parse_url
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.rollback import rollback_run
from hukou_convert.sample import SampleOptions, write_sample
from hukou_convert.verify import verify_run

from .helpers import conversion_state, table_dump
from .procs import Proc, hukou, wait_until

SEED = int(os.environ.get("HUKOU_FAULT_SEED", "20160930"))
KILLS = 20
PERSONS = 3_000
BATCH = 12  # 250 batches: twenty kills land well before the end
ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)
R, H, RUNS = schema.register, schema.history, schema.runs
CUTOVER = ("cutover", "-p", "zhenhai", "--yes", "-q", "--batch-size", str(BATCH), "--out", "rep")


@pytest.fixture(scope="module")
def register_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("register") / "register.csv"
    write_sample(path, SampleOptions(("330211",), PERSONS, seed=23))
    return path


def _scalar(engine: Engine, query: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one() or 0)


def _count(engine: Engine, table: Any, *where: Any) -> int:
    return _scalar(engine, select(func.count()).select_from(table).where(*where))


def _register(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(R).order_by(R.c.record_id))]


def _kill_at_random_point(proc: Proc, rng: random.Random, ledger: Any, engine: Engine) -> None:
    """Kill after 0-4 new ledger rows (0: after a random delay), plus 0-8 ms."""
    new = rng.randint(0, 4)
    if new == 0:
        time.sleep(rng.uniform(0.0, 0.25))
    else:
        start = _count(engine, ledger)
        wait_until(lambda: _count(engine, ledger) >= start + new, proc, f"{new} more batches")
        time.sleep(rng.uniform(0.0, 0.008))
    if proc.poll() is not None:
        raise AssertionError(f"finished before the kill: register too small? {proc.describe()}")
    proc.kill()


def _nothing_half_written_cutover(engine: Engine, resident_before: int) -> None:
    """Every committed batch is whole: its history rows and its register updates, nothing else."""
    B = schema.run_batches
    ledger = _scalar(engine, select(func.coalesce(func.sum(B.c.converted), 0)))
    assert _count(engine, H) == ledger
    assert _count(engine, R, R.c.hukou_type == RESIDENT_TYPE) == resident_before + ledger
    converted = select(H.c.record_id)
    assert _count(engine, R, R.c.record_id.in_(converted), R.c.hukou_type != RESIDENT_TYPE) == 0
    numbers = [r for r in _column(engine, B.c.batch_no)]
    assert numbers == list(range(1, len(numbers) + 1))
    assert _count(engine, RUNS) <= 1
    if _count(engine, RUNS):  # a run record never points at nothing: its census came with it
        assert _count(engine, schema.run_census) > 0


def _column(engine: Engine, column: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(column).order_by(column)).scalars())


@pytest.mark.slow
def test_cutover_killed_twenty_times_ends_as_an_uninterrupted_run(
    two_db_urls: tuple[str, str], register_csv: Path, tmp_path: Path
) -> None:
    killed_url, straight_url = two_db_urls
    killed, straight = make_engine(parse_url(killed_url)), make_engine(parse_url(straight_url))
    for engine in (killed, straight):
        import_register(engine, register_csv)
    run_cutover(straight, ZHENHAI, CUTOFF, batch_size=BATCH)
    expected = conversion_state(straight)
    resident_before = _count(killed, R, R.c.hukou_type == RESIDENT_TYPE)

    rng = random.Random(SEED)
    for _ in range(KILLS):
        proc = hukou(tmp_path, killed_url, *CUTOVER)
        _kill_at_random_point(proc, rng, schema.run_batches, killed)
        _nothing_half_written_cutover(killed, resident_before)
    assert _count(killed, schema.run_batches) > KILLS  # the kills really landed mid-run
    assert _column(killed, RUNS.c.status) == ["running"]

    code, out, err = hukou(tmp_path, killed_url, *CUTOVER).communicate()
    assert code == 0, err
    assert "resumed and completed" in out
    assert conversion_state(killed) == expected
    assert _count(killed, RUNS) == 1  # the same run was continued each time, never a second one
    assert verify_run(killed).ok
    for engine in (killed, straight):
        engine.dispose()


@pytest.mark.slow
def test_rollback_killed_twenty_times_gives_the_register_back(
    two_db_urls: tuple[str, str], register_csv: Path, tmp_path: Path
) -> None:
    killed_url, straight_url = two_db_urls
    killed, straight = make_engine(parse_url(killed_url)), make_engine(parse_url(straight_url))
    for engine in (killed, straight):
        import_register(engine, register_csv)
    original = _register(killed)
    run = run_cutover(killed, ZHENHAI, CUTOFF, batch_size=500)
    straight_run = run_cutover(straight, ZHENHAI, CUTOFF, batch_size=500)
    rollback_run(straight, str(straight_run.run_id), batch_size=BATCH)
    # a rollback batch is quicker than a cutover batch: half the size, so that twenty kills still
    # land before the end on a fast machine
    rollback_batch = str(BATCH // 2)
    rollback = ("rollback", "--run", str(run.run_id), "--yes", "-q", "--batch-size", rollback_batch)
    RB = schema.rollback_batches

    rng = random.Random(SEED + 1)
    for _ in range(KILLS):
        proc = hukou(tmp_path, str(killed_url), *rollback)
        _kill_at_random_point(proc, rng, RB, killed)
        restored = _scalar(killed, select(func.coalesce(func.sum(RB.c.restored), 0)))
        assert _count(killed, H, H.c.reverted_at.is_not(None)) == restored
        still = select(H.c.record_id).where(H.c.reverted_at.is_(None))
        back = select(H.c.record_id).where(H.c.reverted_at.is_not(None))
        assert _count(killed, R, R.c.record_id.in_(still), R.c.hukou_type != RESIDENT_TYPE) == 0
        assert _count(killed, R, R.c.record_id.in_(back), R.c.hukou_type == RESIDENT_TYPE) == 0
    assert _count(killed, RB) > KILLS

    code, out, err = hukou(tmp_path, killed_url, *rollback).communicate()
    assert code == 0, err
    assert "rollback resumed and finished" in out
    assert _register(killed) == original == _register(straight)
    assert _count(killed, H) == run.converted == _count(killed, H, H.c.reverted_at.is_not(None))
    assert _column(killed, RUNS.c.status) == ["reverted"]
    assert verify_run(killed, run.run_id).ok
    for engine in (killed, straight):
        engine.dispose()


def _loaded(engine: Engine) -> list[tuple[Any, ...]]:
    """The register as loaded, without the keys (sequences are not transactional: a killed import
    on PostgreSQL or MariaDB leaves a gap in ``record_id``)."""
    cols = [c for c in R.columns if c.name not in ("record_id", "import_id")]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*cols).order_by(R.c.source_line))]


@pytest.mark.slow
def test_import_killed_twenty_times_loads_all_or_nothing(
    two_db_urls: tuple[str, str], register_csv: Path, tmp_path: Path
) -> None:
    killed_url, straight_url = two_db_urls
    killed, straight = make_engine(parse_url(killed_url)), make_engine(parse_url(straight_url))
    small_chunks = [("hukou_convert.ingest", "_CHUNK_ROWS", 250)]  # 12 INSERTs in one transaction
    args = ("import", str(register_csv), "-q", "--rejects", "rejects.csv")
    code, _, err = hukou(tmp_path, straight_url, *args, patches=small_chunks).communicate()
    assert code == 0, err
    expected = _loaded(straight)
    assert len(expected) == PERSONS
    started = time.monotonic()  # how long a whole import takes, tables already there
    replace = hukou(tmp_path, straight_url, *args, "--replace", patches=small_chunks)
    assert replace.wait() == 0
    duration = time.monotonic() - started

    rng = random.Random(SEED + 2)
    committed = 0
    for _ in range(KILLS):
        mode = ("--replace",) if committed else ()
        proc = hukou(tmp_path, killed_url, *args, *mode, patches=small_chunks)
        time.sleep(rng.uniform(0.0, 1.0) * duration)
        proc.kill()
        try:
            rows = _count(killed, R)
            imports = _count(killed, schema.imports)
        except Exception:  # killed before it created the tables
            rows = imports = 0
        # one transaction with its ledger row: all or nothing, never a part of the file
        assert imports in (committed, committed + 1)
        assert rows == (PERSONS if imports else 0), rows
        if imports:
            assert _loaded(killed) == expected
        committed = imports
    assert committed <= KILLS - 5  # most kills landed before the commit

    code, out, err = hukou(
        tmp_path, killed_url, *args, *(("--replace",) if committed else ())
    ).communicate()
    assert code == 0, err
    assert f"persons: {PERSONS} loaded" in out
    assert _loaded(killed) == expected
    for engine in (killed, straight):
        engine.dispose()


# ---------------------------------------------------------------- the connection dropped


def _terminate_other_sessions(admin: Engine, database: str, backend: str) -> int:
    """Close, from the server side, every session on ``database`` but the admin's own."""
    with admin.connect() as conn:
        if backend == "postgresql":
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                ).all()
            )
        ids = conn.execute(
            text(
                "SELECT id FROM information_schema.processlist"
                " WHERE db = :db AND id <> CONNECTION_ID()"
            ),
            {"db": database},
        ).scalars()
        n = 0
        for session in list(ids):
            try:
                conn.execute(text(f"KILL {int(session)}"))
                n += 1
            except Exception:  # already gone
                pass
        return n


@pytest.mark.slow
def test_connection_dropped_mid_batch_exits_10_and_resumes(
    two_db_urls: tuple[str, str], register_csv: Path, tmp_path: Path
) -> None:
    killed_url, straight_url = two_db_urls
    url = parse_url(killed_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        pytest.skip("SQLite has no server that could close the connection")
    killed, straight = make_engine(url), make_engine(parse_url(straight_url))
    for engine in (killed, straight):
        import_register(engine, register_csv)
    run_cutover(straight, ZHENHAI, CUTOFF, batch_size=BATCH)
    expected = conversion_state(straight)
    admin = create_engine(url.set(database=None if backend != "postgresql" else "postgres"))
    assert url.database is not None
    resident_before = _count(killed, R, R.c.hukou_type == RESIDENT_TYPE)

    proc = hukou(tmp_path, killed_url, *CUTOVER)
    wait_until(lambda: _count(killed, schema.run_batches) >= 5, proc, "5 batches")
    killed.dispose()  # the test's own pooled sessions are not the run's
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        _terminate_other_sessions(admin, url.database, backend)
        time.sleep(0.01)
    code, out, err = proc.communicate()
    assert code == 10, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hukou-convert: database"), err
    assert "Traceback" not in err
    assert _count(killed, RUNS, RUNS.c.status == "running") == 1  # interrupted, not finished
    _nothing_half_written_cutover(killed, resident_before)

    code, out, err = hukou(tmp_path, killed_url, *CUTOVER).communicate()
    assert code == 0, err
    assert "resumed and completed" in out
    assert conversion_state(killed) == expected
    assert verify_run(killed).ok
    for engine in (killed, straight, admin):
        engine.dispose()


# ---------------------------------------------------------------- the workbook cannot be written


def _workbook_cli(*args: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from hukou_convert.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


def test_unwritable_output_directory_is_a_clear_error(
    db_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    """Root ignores permission bits, so the directory is made impossible instead: under a file."""
    engine = make_engine(parse_url(db_url))
    import_register(engine, sample_csv)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    out = blocker / "reports"
    before = table_dump(engine)
    code, stdout, err = _workbook_cli(
        "cutover", "-p", "zhenhai", "--dry-run", "-q", "--out", str(out), "--db", db_url
    )
    assert code == 1, (stdout, err)
    assert err.startswith("hukou-convert: Not a directory") and str(blocker) in err
    assert "Traceback" not in err
    assert table_dump(engine) == before  # the rehearsal wrote nothing, failed or not

    run = run_cutover(engine, ZHENHAI, CUTOFF)
    before = table_dump(engine)
    code, stdout, err = _workbook_cli("report", "-q", "--out", str(out), "--db", db_url)
    assert code == 1 and str(blocker) in err and "Traceback" not in err
    assert table_dump(engine) == before
    assert verify_run(engine, run.run_id).ok
    left = _files(tmp_path)
    assert not [f for f in left if f.endswith((".tmp", ".xlsx", ".sha256", ".json", ".gz"))]
    engine.dispose()


def test_disk_full_at_the_last_write_leaves_no_file(
    sqlite_url: str, sample_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC when the workbook's bytes reach the disk (fsync): no file, no temporary file, the
    message names the workbook. The real full disk is the tmpfs test below."""
    import errno

    from hukou_convert import xlsx

    engine = make_engine(parse_url(sqlite_url))
    import_register(engine, sample_csv)
    run_cutover(engine, ZHENHAI, CUTOFF)
    before = table_dump(engine)

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(xlsx.os, "fsync", full)
    out = tmp_path / "reports"
    code, stdout, err = _workbook_cli("report", "-q", "--out", str(out), "--db", sqlite_url)
    assert code == 1, (stdout, err)
    assert err.startswith("hukou-convert: No space left on device: ")
    assert str(out / "hukou-cutover-") in err and ".xlsx" in err
    assert _files(out) == []
    assert table_dump(engine) == before
    engine.dispose()


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A 24 KiB tmpfs: far too small for a workbook. Needs mount(2) (root, not in every CI)."""
    import subprocess

    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here ({done.stderr.strip()}); see the ENOSPC test"
        if os.environ.get("CI") == "true":  # CI runs as root on the project's machine: it can
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_while_writing_the_workbook(
    full_disk: Path, db_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    """A real full disk, a real process (stderr as the operator sees it), on each database: the
    cutover itself is committed and verifies, the workbook fails with one clear line, no partial or
    temporary file is left, and ``report`` writes it once there is room."""
    url = db_url
    engine = make_engine(parse_url(url))
    import_register(engine, sample_csv)
    code, out, err = hukou(
        tmp_path, url, "cutover", "-p", "zhenhai", "--yes", "-q", "--out", str(full_disk)
    ).communicate()
    assert code == 1, (out, err)
    assert err.strip().splitlines() == [err.strip()], err  # one line, no "Exception ignored…"
    assert err.startswith(f"hukou-convert: No space left on device: {full_disk}/hukou-cutover-")
    assert "Traceback" not in err
    assert os.listdir(full_disk) == []
    assert _column(engine, RUNS.c.status) == ["completed"]
    assert verify_run(engine).ok
    before = table_dump(engine)
    code, out, err = hukou(tmp_path, url, "report", "-q", "--out", str(full_disk)).communicate()
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert os.listdir(full_disk) == []
    assert table_dump(engine) == before
    code, out, err = hukou(tmp_path, url, "report", "-q", "--out", "room").communicate()
    assert code == 0, err
    assert table_dump(engine) == before
    engine.dispose()


# ---------------------------------------------------------------- schema work and data work


def test_failure_creating_the_schema_leaves_no_run_and_a_retry_works(
    engine: Engine, sample_csv: Path
) -> None:
    """Tables missing (an older schema): the cutover creates them before any data work. If that
    fails half-way, no run record exists, the register is untouched, and the next attempt creates
    the rest and runs."""
    from sqlalchemy import event

    import_register(engine, sample_csv)
    with engine.begin() as conn:
        for table in (schema.history, schema.run_census, schema.run_batches):
            table.drop(conn)
    before = table_dump(engine)

    def refuse(*_args: Any, **_kw: Any) -> None:
        raise RuntimeError("injected failure creating hukou_run_batches")

    event.listen(schema.run_batches, "before_create", refuse)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            run_cutover(engine, ZHENHAI, CUTOFF)
    finally:
        event.remove(schema.run_batches, "before_create", refuse)
    after = table_dump(engine)
    assert after.get("hukou_runs", []) == [] and after.get("hukou_type_history", []) == []
    assert {k: v for k, v in after.items() if v} == {k: v for k, v in before.items() if v}
    run = run_cutover(engine, ZHENHAI, CUTOFF)
    assert run.outcome == "completed" and verify_run(engine, run.run_id).ok


def test_run_record_is_written_with_its_census_or_not_at_all(
    engine: Engine, sample_csv: Path
) -> None:
    """The run, the in-flight decisions and the census are one transaction: a failure inserting the
    census (here injected at the statement) leaves no run pointing at nothing."""
    from sqlalchemy import event

    import_register(engine, sample_csv)
    schema.ensure_schema(engine)
    before = table_dump(engine)

    def refuse(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO HUKOU_RUN_CENSUS"):
            raise RuntimeError("injected failure writing the census")

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            run_cutover(engine, ZHENHAI, CUTOFF)
    finally:
        event.remove(engine, "before_cursor_execute", refuse)
    assert table_dump(engine) == before  # no run, no census, no decision, no record changed
    run = run_cutover(engine, ZHENHAI, CUTOFF)
    assert run.outcome == "completed" and verify_run(engine, run.run_id).ok
