"""A run held to a rehearsal's plan on PostgreSQL reads no record again when its snapshot holds the
very rows the rehearsal's did; any row written since, a rewrite, another database or a doubt sends
it back to reading the register against the plan."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook
from sqlalchemy import Engine, select, text

from hukou_convert import prewrite, schema
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.db import make_engine
from hukou_convert.ingest import import_applications, import_register
from hukou_convert.pgrows import RowsState
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.verify import verify_run

from .conftest import SAMPLE, _admin_engine
from .test_cli import run

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)


@pytest.fixture
def register(pg_engine: Engine, sample_csv: Path) -> Engine:
    import_register(pg_engine, sample_csv)
    import_applications(pg_engine, SAMPLE / "zhenhai_applications.csv")
    return pg_engine


class _Read(Exception):
    pass


def _no_record_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise _Read()

    monkeypatch.setattr(prewrite, "compare_records", refuse)


def _rehearsed(engine: Engine, plan_dir: Path) -> Path:
    plan = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=plan_dir).plan_path
    assert plan is not None
    return plan


def _kept(plan: Path) -> dict[str, Any]:
    kept: dict[str, Any] = json.loads(plan.read_text(encoding="utf-8"))["postgresql_rows"]
    return kept


def test_a_run_on_the_rows_the_rehearsal_read_reads_no_record_again(
    register: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = register
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path)
    assert rehearsal.plan_path is not None
    kept = _kept(rehearsal.plan_path)
    with engine.connect() as conn:
        rows = conn.execute(select(schema.register.c.record_id)).all()
    assert kept["rows"] == len(rows) and kept["register"] is None
    assert RowsState.from_json(kept) is not None

    _no_record_read(monkeypatch)
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=rehearsal.plan_path)
    comparison = result.plan_comparison
    assert comparison is not None and comparison.unchanged_rows and comparison.matches
    assert not comparison.unchanged_file
    assert result.converted == rehearsal.converted
    assert result.census.lines == rehearsal.census.lines
    with engine.connect() as conn:
        kept_fingerprint = conn.execute(select(schema.runs.c.register_sha256)).scalar_one()
    assert kept_fingerprint == rehearsal.fingerprint
    assert verify_run(engine).ok


# each a change after the rehearsal; the records the run must then name (None: it must match;
# "all": every record differs)
WRITES: dict[str, tuple[list[str], list[str] | str | None]] = {
    "an update that changes nothing": (
        ["UPDATE hukou_register SET name = name WHERE record_id = 9"],
        None,
    ),
    "an update": (["UPDATE hukou_register SET name = '改名' WHERE record_id = 9"], ["9"]),
    "a delete": (["DELETE FROM hukou_register WHERE record_id = 9"], ["9"]),
    "a rewrite of the table": (["VACUUM FULL hukou_register"], None),
    # the catalog alone: no row written, yet what is read changes (or may)
    "two columns' names swapped": (
        [
            "ALTER TABLE hukou_register RENAME COLUMN name TO swapped",
            "ALTER TABLE hukou_register RENAME COLUMN address TO name",
            "ALTER TABLE hukou_register RENAME COLUMN swapped TO address",
        ],
        "all",
    ),
    "a column dropped and added again with a default": (
        [
            "ALTER TABLE hukou_register DROP COLUMN relation",
            "ALTER TABLE hukou_register ADD COLUMN relation VARCHAR(20) DEFAULT '户主'",
        ],
        "all",
    ),
    "a child table": (["CREATE TABLE register_annex () INHERITS (hukou_register)"], None),
    "row security": (["ALTER TABLE hukou_register ENABLE ROW LEVEL SECURITY"], None),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_any_change_since_sends_the_run_back_to_reading(
    register: Engine, tmp_path: Path, write: str
) -> None:
    engine = register
    plan = _rehearsed(engine, tmp_path)
    statements, named = WRITES[write]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements:
            conn.execute(text(statement))
        records = conn.execute(text("SELECT count(*) FROM hukou_register")).scalar_one()
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan, accept_changes=True)
    comparison = result.plan_comparison
    assert comparison is not None and not comparison.unchanged_rows
    if named == "all":
        assert comparison.record_differences == records
    else:
        assert [d.key for d in comparison.before if d.kind == "record"] == (named or [])


def test_a_row_written_beside_the_rehearsal_and_committed_after_it_is_caught(
    register: Engine, tmp_path: Path
) -> None:
    """A transaction that wrote before the rehearsal's snapshot and committed after it: the
    rehearsal did not see its row, yet the row is older than the snapshot's end (xmax, past a
    later transaction committed before the snapshot); only the snapshot's xmin tells it from the
    rows the rehearsal saw."""
    engine = register
    with engine.connect() as writer:
        writer.execute(text("UPDATE hukou_register SET name = '改名' WHERE record_id = 9"))
        with engine.begin() as later:  # committed before the snapshot: moves its xmax on
            later.execute(text("CREATE TABLE operator_notes (note TEXT)"))
        plan = _rehearsed(engine, tmp_path)  # sees record 9 as it was
        writer.commit()
    kept = _kept(plan)
    with engine.connect() as conn:
        written_by = int(
            conn.execute(
                text("SELECT xmin::text FROM hukou_register WHERE record_id = 9")
            ).scalar_one()
        )
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan, accept_changes=True)
    comparison = result.plan_comparison
    assert comparison is not None and not comparison.unchanged_rows
    assert [d.key for d in comparison.before if d.kind == "record"] == ["9"]
    assert written_by == kept["xmin"] % (1 << 32)  # the oldest transaction then running


@pytest.fixture
def copy_of(register: Engine) -> Iterator[Callable[[], Engine]]:
    """A copy of the register's database (CREATE DATABASE … TEMPLATE): the same rows, the same
    transaction ids, another database."""
    admin = _admin_engine("postgresql")
    name = f"hk_{uuid.uuid4().hex[:12]}"
    copies: list[Engine] = []

    def make() -> Engine:
        register.dispose()  # a template may have no other connection
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{register.url.database}"'))
        copies.append(make_engine(register.url.set(database=name)))
        return copies[-1]

    yield make
    for copy in copies:
        copy.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_a_copy_of_the_rehearsed_database_is_read(
    register: Engine, tmp_path: Path, copy_of: Callable[[], Engine]
) -> None:
    plan = _rehearsed(register, tmp_path)
    copy = copy_of()
    result = run_cutover(copy, ZHENHAI, CUTOFF, expect=plan)
    comparison = result.plan_comparison
    assert comparison is not None and comparison.matches and not comparison.unchanged_rows


# a plan's rows state moved where the run must not trust it
DOUBTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "more than 2^31 transactions since": lambda kept: kept.update(xmin=kept["xmin"] - (1 << 31)),
    "a write-ahead log behind the rehearsal's": lambda kept: kept.update(lsn="FFFFFFFF/0"),
    "another timeline": lambda kept: kept.update(timeline="00000002"),
    "a server started since": lambda kept: kept.update(started="0"),
    "another cluster": lambda kept: kept.update(system="1"),
    "as many rows as one more": lambda kept: kept.update(rows=kept["rows"] + 1),
}


@pytest.mark.parametrize("doubt", list(DOUBTS))
def test_a_doubt_sends_the_run_back_to_reading(
    register: Engine, tmp_path: Path, doubt: str
) -> None:
    plan = _rehearsed(register, tmp_path)
    document = json.loads(plan.read_text(encoding="utf-8"))
    DOUBTS[doubt](document["postgresql_rows"])
    plan.write_text(json.dumps(document), encoding="utf-8")
    result = run_cutover(register, ZHENHAI, CUTOFF, expect=plan, accept_changes=True)
    comparison = result.plan_comparison
    assert comparison is not None and not comparison.unchanged_rows
    assert not [d for d in comparison.before if d.kind == "record"]


def test_the_cli_says_the_records_were_not_read_again(register: Engine) -> None:
    db = ["--db", register.url.render_as_string(hide_password=False)]
    assert run("cutover", "-p", "zhenhai", "--dry-run", "-q", "--out", "reports", *db)[0] == 0
    [plan] = list(Path("reports").glob("hukou-plan-zhenhai-*.json"))
    code, out, _ = run("cutover", "-p", "zhenhai", "--yes", "-q", "--expect", str(plan), *db)
    assert code == 0, out
    assert "the very rows the rehearsal read" in out and "not read again" in out
    [workbook] = list(Path("reports").glob("hukou-cutover-*.xlsx"))
    sheet = load_workbook(workbook, read_only=True)["演练对比"]
    notes = [str(cell) for row in sheet.iter_rows(values_only=True) for cell in row if cell]
    assert any("PostgreSQL" in note and "未再逐条读取" in note for note in notes)
