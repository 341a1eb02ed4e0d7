"""A run held to a rehearsal's plan on the very SQLite file the rehearsal read reads nothing again;
any write since sends it back to reading the register against the plan."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update

from hukou_convert import run_start, schema
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.db import make_engine, parse_url
from hukou_convert.errors import RegisterStateError
from hukou_convert.ingest import import_applications, import_register
from hukou_convert.prewrite import ReadingBeside
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.sqlitefile import FileState, file_state
from hukou_convert.verify import verify_run

from .conftest import SAMPLE
from .helpers import table_dump
from .test_cli import run

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)


@pytest.fixture
def sqlite_engine(sqlite_url: str, sample_csv: Path) -> Any:
    engine = make_engine(parse_url(sqlite_url))
    import_register(engine, sample_csv)
    import_applications(engine, SAMPLE / "zhenhai_applications.csv")
    yield engine
    engine.dispose()


def _state(engine: Engine) -> FileState:
    state = file_state(engine)
    assert state is not None
    return state


def _rehearsed(engine: Engine, plan_dir: Path) -> Path:
    """The plan of a rehearsal of ``engine``'s register."""
    plan = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=plan_dir).plan_path
    assert plan is not None
    return plan


class _Read(Exception):
    pass


def _no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run must not read the register beside its conversion."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise _Read()

    monkeypatch.setattr(run_start, "ReadingBeside", refuse)


def test_the_change_counter_moves_by_one_per_committed_write(sqlite_engine: Engine) -> None:
    engine = sqlite_engine
    start = _state(engine)
    with engine.connect() as conn:  # reads change nothing
        conn.execute(select(schema.register.c.record_id)).all()
    assert _state(engine) == start
    with engine.begin() as conn:  # several statements, one transaction: one
        R = schema.register
        conn.execute(update(R).where(R.c.record_id == 1).values(name="甲"))
        conn.execute(update(R).where(R.c.record_id == 2).values(name="乙"))
    assert _state(engine).change_counter == start.change_counter + 1
    with engine.connect() as conn:  # rolled back: none
        conn.execute(update(R).where(R.c.record_id == 3).values(name="丙"))
        conn.rollback()
    assert _state(engine).change_counter == start.change_counter + 1
    deferral = schema.defer_history_indexes(engine)  # each index dropped: one
    assert deferral.deferred and deferral.drops == len(schema.HISTORY_INDEXES)
    assert _state(engine).change_counter == start.change_counter + 1 + deferral.drops


def test_no_state_where_there_is_no_counter_to_trust(tmp_path: Path) -> None:
    wal = tmp_path / "wal.db"
    raw = sqlite3.connect(wal)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("CREATE TABLE t (x)")
    raw.close()  # the WAL checkpointed and removed: the header says WAL mode
    assert not Path(f"{wal}-wal").exists()
    assert file_state(make_engine(parse_url(f"sqlite:///{wal}"))) is None
    assert file_state(make_engine(parse_url("sqlite://"))) is None
    assert file_state(make_engine(parse_url("postgresql://u@127.0.0.1/x"))) is None
    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as raw:
        raw.execute("CREATE TABLE t (x)")
    engine = make_engine(parse_url(f"sqlite:///{plain}"))
    assert file_state(engine) is not None
    Path(f"{plain}-journal").write_bytes(b"")  # a write may be under way
    assert file_state(engine) is None
    assert file_state(engine, writing=True) is not None


def test_a_run_on_the_file_the_rehearsal_read_reads_nothing_again(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sqlite_engine
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path / "reports")
    assert rehearsal.plan_path is not None
    kept = json.loads(rehearsal.plan_path.read_text(encoding="utf-8"))["sqlite_file"]
    assert kept["change_counter"] == _state(engine).change_counter and kept["register"] is None

    _no_reading(monkeypatch)
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=rehearsal.plan_path)
    comparison = result.plan_comparison
    assert comparison is not None and comparison.unchanged_file and comparison.matches
    assert result.converted == rehearsal.converted
    assert result.census.lines == rehearsal.census.lines
    with engine.connect() as conn:
        kept_fingerprint = conn.execute(select(schema.runs.c.register_sha256)).scalar_one()
    assert kept_fingerprint == rehearsal.fingerprint
    assert verify_run(engine).ok  # the census it kept is the register's


def test_any_write_since_the_rehearsal_sends_the_run_back_to_reading(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sqlite_engine
    plan = _rehearsed(engine, tmp_path)
    with engine.begin() as conn:  # a write beside the register: it still reads the same
        conn.execute(text("CREATE TABLE operator_notes (note TEXT)"))
    with monkeypatch.context() as patched:
        _no_reading(patched)
        with pytest.raises(_Read):
            run_cutover(engine, ZHENHAI, CUTOFF, expect=plan)
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan)
    comparison = result.plan_comparison
    assert comparison is not None and not comparison.unchanged_file and comparison.matches


def test_a_write_beside_the_history_indexes_dropped_is_caught(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sqlite_engine
    plan = _rehearsed(engine, tmp_path)
    drop = schema.defer_history_indexes

    def drop_and_someone_writes(e: Engine) -> schema.Deferral:
        deferral = drop(e)
        with sqlite3.connect(str(e.url.database)) as raw:
            raw.execute("UPDATE hukou_register SET name = '改名' WHERE record_id = 9")
        return deferral

    monkeypatch.setattr(schema, "defer_history_indexes", drop_and_someone_writes)
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan, accept_changes=True)
    comparison = result.plan_comparison
    assert comparison is not None and not comparison.unchanged_file
    assert [d.key for d in comparison.before if d.kind == "record"] == ["9"]


def test_a_write_just_before_the_write_lock_stops_the_run_with_nothing_written(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sqlite_engine
    plan = _rehearsed(engine, tmp_path)
    before = table_dump(engine)
    real = file_state

    def as_if_written(
        e: Engine, *, writing: bool = False, fd: int | None = None
    ) -> FileState | None:
        state = real(e, writing=writing, fd=fd)
        if writing and state is not None:  # as found under the write lock: one commit more
            return FileState(state.size, state.mtime_ns, state.change_counter + 1)
        return state

    monkeypatch.setattr(run_start, "file_state", as_if_written)
    with pytest.raises(RegisterStateError, match="nothing was written"):
        run_cutover(engine, ZHENHAI, CUTOFF, expect=plan)
    assert table_dump(engine) == before
    with engine.connect() as conn:  # the history's indexes dropped for the run are back
        names = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master"))}
    assert {index.name for index in schema.HISTORY_INDEXES} <= names
    monkeypatch.undo()
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan)  # it reads, and matches
    assert result.plan_comparison is not None and result.plan_comparison.matches
    assert not result.plan_comparison.unchanged_file


def test_the_run_keeps_its_write_lock_while_it_checks_the_file(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a descriptor of the file would release the process's POSIX locks, SQLite's write
    lock included: another process must still find the database locked after the check."""
    engine = sqlite_engine
    plan = _rehearsed(engine, tmp_path)
    real = file_state
    others: list[str] = []

    def and_another_process_writes(
        e: Engine, *, writing: bool = False, fd: int | None = None
    ) -> FileState | None:
        state = real(e, writing=writing, fd=fd)
        if writing:
            tried = subprocess.run(
                [sys.executable, "-c", _ANOTHER_WRITER, str(e.url.database)],
                capture_output=True,
                text=True,
                check=False,
            )
            others.append(tried.stdout.strip())
        return state

    monkeypatch.setattr(run_start, "file_state", and_another_process_writes)
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan)
    assert result.plan_comparison is not None and result.plan_comparison.unchanged_file
    assert others == ["database is locked"]


_ANOTHER_WRITER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    db.execute("BEGIN IMMEDIATE")
    db.execute("CREATE TABLE written_beside (x)")
    db.execute("COMMIT")
    print("written")
except sqlite3.OperationalError as err:
    print(err)
"""


def test_the_cli_says_the_records_were_not_read_again(sqlite_url: str, sample_csv: Path) -> None:
    db = ["--db", sqlite_url]
    assert run("import", str(sample_csv), *db)[0] == 0
    assert run("cutover", "-p", "zhenhai", "--dry-run", "-q", "--out", "reports", *db)[0] == 0
    [plan] = list(Path("reports").glob("hukou-plan-zhenhai-*.json"))
    code, out, _ = run("cutover", "-p", "zhenhai", "--yes", "-q", "--expect", str(plan), *db)
    assert code == 0, out
    assert "matches" in out and "its records were not read again" in out


def test_reading_beside_stays_for_a_run_without_a_plan(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered: list[ReadingBeside] = []
    real = ReadingBeside

    def spy(*args: Any) -> ReadingBeside:
        entered.append(real(*args))
        return entered[-1]

    monkeypatch.setattr(run_start, "ReadingBeside", spy)
    result = run_cutover(sqlite_engine, ZHENHAI, CUTOFF)
    assert result.plan_comparison is None and len(entered) == 1


def test_the_run_on_the_unchanged_file_moves_the_census_as_the_reading_run_does(
    tmp_path: Path,
) -> None:
    """Approved applications (two for one person): the run on the unchanged file takes the census
    the rehearsal took before any application and moves it by what it applied itself, as the run
    that reads the register does: the same census, the same comparison (a census moved twice, or
    not at all, would differ)."""
    from .helpers import ident, person, write_register

    someone = ident("330211", "19700101", 3)
    register = write_register(
        tmp_path / "register.csv",
        [
            person(someone, "2", household="H1", name="甲"),
            person(ident("330211", "19700101", 5), "2"),
        ],
    )
    apps = tmp_path / "apps.csv"
    apps.write_text(
        "业务编号,公民身份号码,业务类型,申请时间,审批状态,审批时间\n"
        f"A01,{someone},农转非,2016-08-01 10:00,已批准,2016-09-20 15:00\n"
        f"A02,{someone},农转非,2016-08-02 10:00,已批准,2016-09-21 15:00\n",
        encoding="utf-8",
    )
    outcomes = []
    for name in ("reading", "unchanged"):
        engine = make_engine(parse_url(f"sqlite:///{tmp_path / name}.db"))
        import_register(engine, register)
        import_applications(engine, apps)
        plan = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path / name).plan_path
        assert plan is not None
        if name == "reading":
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE operator_notes (note TEXT)"))
        result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan, accept_changes=True)
        comparison = result.plan_comparison
        assert comparison is not None and comparison.unchanged_file == (name == "unchanged")
        outcomes.append(([(d.kind, d.key) for d in comparison.before], result.census.lines))
        assert verify_run(engine).ok
        engine.dispose()
    assert outcomes[0] == outcomes[1]
