"""A finished run records what it reported; its report is written again from that record, not from
the register as it is later (and without running the checks again)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, delete, func, select, update

from hukou_convert import schema
from hukou_convert.cutover import load_run_result, run_cutover
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.run_findings import recorded_findings

from .helpers import ident, person, write_register

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
F = schema.run_findings
R = schema.register


def _register(engine: Engine, tmp_path: Path) -> str:
    good = ident("330211", "19800101", 11)
    wrong = ident("330211", "19800101", 13)
    wrong = wrong[:17] + ("0" if wrong[17] != "0" else "1")  # a wrong check character
    rows = [person(good, "2"), person(wrong, "1", household="H2")]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    return wrong


def test_the_run_records_its_findings_and_the_report_reads_them(
    engine: Engine, tmp_path: Path
) -> None:
    wrong = _register(engine, tmp_path)
    result = run_cutover(engine, ZHENHAI, resolve_cutoff(ZHENHAI, None))
    assert result.run_id is not None
    assert "WRONG_CHECK_DIGIT" in {f.code for f in result.findings}
    assert recorded_findings(engine, result.run_id) == result.findings

    # the register is corrected after the cutover: the run's report still says what the run found
    with engine.begin() as conn:
        conn.execute(update(R).where(R.c.id_number == wrong).values(id_number="X"))
    later = load_run_result(engine, result.run_id)
    assert later.findings == result.findings


def test_a_run_that_recorded_nothing_is_checked_again(engine: Engine, tmp_path: Path) -> None:
    _register(engine, tmp_path)
    result = run_cutover(engine, ZHENHAI, resolve_cutoff(ZHENHAI, None))
    assert result.run_id is not None
    with engine.begin() as conn:  # as a run of an older version, or killed before the record
        conn.execute(delete(F).where(F.c.run_id == result.run_id))
    assert recorded_findings(engine, result.run_id) is None
    assert load_run_result(engine, result.run_id).findings == result.findings


def test_a_rerun_after_completion_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    _register(engine, tmp_path)
    first = run_cutover(engine, ZHENHAI, resolve_cutoff(ZHENHAI, None))
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(F)).scalar_one()
    again = run_cutover(engine, ZHENHAI, resolve_cutoff(ZHENHAI, None))
    assert again.outcome == "already-complete"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(F)).scalar_one() == before
    assert first.run_id is not None
    assert before == len(first.findings) + 1  # row 0 marks the record
