"""The rehearsal's plan predicts the cutover; a changed register is shown record by record."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from hukou_convert import schema
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.errors import PlanMismatchError
from hukou_convert.ingest import ImportMode, import_applications, import_register
from hukou_convert.plan import BlockComparer
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff

from .conftest import SAMPLE
from .helpers import ident, person, table_dump, write_register

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)


def _loaded(engine: Engine, sample_csv: Path) -> None:
    import_register(engine, sample_csv)
    import_applications(engine, SAMPLE / "zhenhai_applications.csv")


def test_plan_matches_the_cutover_on_an_unchanged_register(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    _loaded(engine, sample_csv)
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path / "reports")
    assert rehearsal.plan_path is not None
    plan = json.loads(rehearsal.plan_path.read_text(encoding="utf-8"))
    assert stat.S_IMODE(os.stat(rehearsal.plan_path).st_mode) == 0o600
    assert plan["register_sha256"] == rehearsal.fingerprint
    assert plan["counts"]["to_convert"] == rehearsal.converted
    assert len(plan["applications"]) == 6
    text = rehearsal.plan_path.read_text(encoding="utf-8")
    assert ident("330211", "20000101", 22) not in text  # no personal data in a plan

    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=rehearsal.plan_path)
    comparison = result.plan_comparison
    assert comparison is not None
    assert comparison.before == [] and comparison.after == []
    assert comparison.matches and comparison.compared_before


def test_an_edited_record_refuses_the_run_and_is_named(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    _loaded(engine, sample_csv)
    plan_path = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path).plan_path
    assert plan_path is not None
    R = schema.register
    with engine.begin() as conn:
        conn.execute(update(R).where(R.c.record_id == 17).values(hukou_type="1"))
    before = table_dump(engine)
    with pytest.raises(PlanMismatchError) as err:
        run_cutover(engine, ZHENHAI, CUTOFF, expect=plan_path)
    assert "record 17: changed since" in err.value.message()
    assert table_dump(engine) == before  # nothing was written

    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan_path, accept_changes=True)
    comparison = result.plan_comparison
    assert comparison is not None and comparison.accepted
    assert [(d.kind, d.key) for d in comparison.before if d.kind == "record"] == [("record", "17")]
    assert comparison.record_differences == 1


def test_an_added_record_shows_as_added_and_moves_the_counts(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    _loaded(engine, sample_csv)
    plan_path = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path).plan_path
    assert plan_path is not None
    extra = write_register(tmp_path / "more.csv", [person(ident("330211", "19800101", 1), "2")])
    import_register(engine, extra, mode=ImportMode.APPEND)
    with pytest.raises(PlanMismatchError) as err:
        run_cutover(engine, ZHENHAI, CUTOFF, expect=plan_path)
    message = err.value.message()
    assert "record 329: added since" in message
    assert "census to_convert: rehearsal" in message
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan_path, accept_changes=True)
    assert result.plan_comparison is not None
    after = {(d.kind, d.key): d for d in result.plan_comparison.after}
    moved = after[("count", "AGRICULTURAL/FAMILY")]
    assert int(moved.actual) == int(moved.expected) + 1


def test_a_plan_for_other_parameters_is_refused(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    _loaded(engine, sample_csv)
    plan_path = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path).plan_path
    assert plan_path is not None
    other = resolve_cutoff(ZHENHAI, "2016-10-15 00:00", force=True)
    with pytest.raises(PlanMismatchError, match="parameter cutoff"):
        run_cutover(engine, ZHENHAI, other, expect=plan_path)


def test_the_cutover_workbook_shows_the_comparison(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    from openpyxl import load_workbook

    from hukou_convert.workbook import write_run_workbook

    _loaded(engine, sample_csv)
    plan_path = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path).plan_path
    assert plan_path is not None
    R = schema.register
    with engine.begin() as conn:
        conn.execute(update(R).where(R.c.record_id == 17).values(name="改了名"))
        number = conn.execute(select(R.c.id_number).where(R.c.record_id == 17)).scalar_one()
    result = run_cutover(engine, ZHENHAI, CUTOFF, expect=plan_path, accept_changes=True)
    written = write_run_workbook(engine, result, tmp_path / "reports")
    wb = load_workbook(written.path, read_only=True)
    assert "演练对比" in wb.sheetnames
    rows = [list(r) for r in wb["演练对比"].iter_rows(values_only=True)]
    notes = [r[0] for r in rows[:3]]
    assert any("不一致" in str(n) for n in notes)
    assert any("--accept-changes" in str(n) for n in notes)
    [record] = [r for r in rows if r[0] == "记录"]
    assert record[1] == "17" and record[5] == "changed since"
    assert record[2] == number[:6] + "********" + number[-4:]  # masked
    assert record[3] == "改**"
    # a run without --expect has no comparison sheet
    plain = rehearse(engine, ZHENHAI, CUTOFF)
    assert "演练对比" not in write_run_workbook(engine, plain, tmp_path / "r2").sheets


def test_an_application_decided_otherwise_than_rehearsed_refuses_the_run(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    from datetime import datetime

    from hukou_convert.instants import CST

    _loaded(engine, sample_csv)
    plan_path = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path).plan_path
    assert plan_path is not None
    A = schema.applications
    with engine.begin() as conn:  # approved in the meantime
        conn.execute(
            update(A)
            .where(A.c.application_id == "NZF-2016-0002")
            .values(status="已批准", approved_at=datetime(2016, 9, 20, 10, tzinfo=CST))
        )
    before = table_dump(engine)
    with pytest.raises(PlanMismatchError) as err:
        run_cutover(engine, ZHENHAI, CUTOFF, expect=plan_path)
    assert "application NZF-2016-0002: rehearsal TERMINATED, now APPLIED" in err.value.message()
    assert table_dump(engine) == before


def test_a_run_that_differs_from_its_plan_exits_15(
    sqlite_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from hukou_convert.cli import cli

    runner = CliRunner()
    db = ["--db", sqlite_url]
    runner.invoke(cli, ["import", str(sample_csv), "-q", *db])
    reports = tmp_path / "reports"
    runner.invoke(cli, ["cutover", "-p", "zhenhai", "--dry-run", "-q", "--out", str(reports), *db])
    [plan] = list(reports.glob("hukou-plan-*.json"))
    extra = write_register(tmp_path / "late.csv", [person(ident("330211", "19800101", 1), "2")])
    runner.invoke(cli, ["import", str(extra), "--append", "-q", *db])
    args = ["cutover", "-p", "zhenhai", "--yes", "-q", "--out", str(reports), *db]
    result = runner.invoke(cli, [*args, "--expect", str(plan), "--accept-changes"])
    assert result.exit_code == 15, result.output
    assert "completed, but" in result.stderr and "DIFFERS" in result.stdout


def test_a_block_is_compared_by_key_in_whatever_order_the_database_sorts_text_keys() -> None:
    """Text keys of digits in a text column: the database orders "10" before "2". A removed, an
    added and a changed record are each named once, and nothing else."""
    planned = [("1", "a"), ("10", "b"), ("11", "c"), ("2", "d"), ("3", "e")]
    now_read = [("1", "a"), ("11", "c"), ("12", "f"), ("2", "changed"), ("3", "e")]
    comparer = BlockComparer(iter(planned))
    for key, digest in now_read:
        comparer(key, digest)
    comparer.finish()
    assert comparer.count == 3
    assert sorted((d.key, d.actual) for d in comparer.shown) == [
        ("10", "removed since"),
        ("12", "added since"),
        ("2", "changed since"),
    ]
