"""A finished run records what it reported; its report is written again from that record, not from
the register as it is later (and without running the checks again)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, func, select, update

from hukou_convert import run_findings, schema
from hukou_convert.cutover import load_run_result, run_cutover
from hukou_convert.findings import Finding
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.run_findings import recorded_findings, store_findings

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


def test_recorded_findings_are_written_and_read_a_chunk_at_a_time_in_their_order(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record is written, and read back as it is gone through, a few rows at a time (a city's
    findings are never all held at once), and reads as the list it was: its length, its order,
    any finding by index, each time it is gone through."""
    monkeypatch.setattr(run_findings, "_CHUNK_ROWS", 2)
    findings = [
        Finding(
            code="WRONG_CHECK_DIGIT" if n % 2 else "DUPLICATE_ID",
            category="错" if n % 2 else "重",
            severity="error",
            record_id=n if n != 3 else f"legacy-{n}",  # a legacy table's text key
            id_number=f"33021119800101{n:03d}X",
            name=f"测试{n}",
            explanation=f"说明 {n}",
            action="未转换",
            upgraded_id=None if n != 4 else "330211198001010040",
        )
        for n in range(1, 8)
    ]
    store_findings(engine, "R-chunks", findings)
    store_findings(engine, "R-other", findings[:1])
    recorded = recorded_findings(engine, "R-chunks")
    assert recorded is not None
    assert len(recorded) == 7
    assert list(recorded) == findings
    assert list(recorded) == findings  # again: read afresh
    assert recorded == findings
    with engine.begin() as conn:  # read as gone through: a change to the record shows
        conn.execute(
            update(F).where(F.c.run_id == "R-chunks", F.c.seq == 5).values(explanation="改")
        )
    assert [f.explanation for f in recorded][4] == "改"
    assert recorded != findings and recorded[4].explanation == "改"
    with engine.begin() as conn:
        conn.execute(
            update(F).where(F.c.run_id == "R-chunks", F.c.seq == 5).values(explanation="说明 5")
        )
    assert (recorded[0], recorded[6], recorded[-1], recorded[-7]) == (
        findings[0],
        findings[6],
        findings[6],
        findings[0],
    )
    assert recorded[2:5] == findings[2:5]
    left_early = iter(recorded)  # the rest of the result let go of: the connection serves again
    assert next(left_early) == findings[0]
    left_early.close()
    assert list(recorded) == findings
    with pytest.raises(IndexError):
        recorded[7]
    with pytest.raises(IndexError):
        recorded[-8]
    assert recorded_findings(engine, "R-none") is None
    none_found = recorded_findings(engine, "R-other")
    assert none_found is not None and list(none_found) == findings[:1]
    store_findings(engine, "R-other", [])  # replaced: a run that found nothing
    empty = recorded_findings(engine, "R-other")
    assert empty is not None and len(empty) == 0 and list(empty) == []
    assert none_found != findings[:1] and none_found == []  # read now: the record is empty
    with pytest.raises(IndexError):
        none_found[0]
