"""A profile may hold back exception categories: held records are listed, not converted, and
converted by the same run once the exception is resolved. On three databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from hukou_convert import schema
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.errors import ProfileError
from hukou_convert.holds import HELD_ACTION
from hukou_convert.ingest import import_register
from hukou_convert.profiles import load_profile, resolve_cutoff
from hukou_convert.verify import verify_run

from .helpers import ident

R, HOLDS = schema.register, schema.run_holds


def _profile(tmp_path: Path, codes: str = '["DUPLICATE_ID_NUMBER"]') -> Path:
    path = tmp_path / "hold.toml"
    path.write_text(f'name = "zhenhai-hold"\nbase = "zhenhai"\nhold_back = {codes}\n', "utf-8")
    return path


def _duplicates(engine: Engine) -> list[int]:
    """The sample's deliberate duplicate: 标签7 and 标签8 share one ID number."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(R.c.record_id)
                .where(R.c.name.in_(["标签7", "标签8"]))
                .order_by(R.c.record_id)
            ).scalars()
        )


def test_held_records_are_listed_not_converted_then_released(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    profile = load_profile(str(_profile(tmp_path)))
    cutoff = resolve_cutoff(profile, None)
    import_register(engine, sample_csv)
    pair = _duplicates(engine)
    rehearsal = rehearse(engine, profile, cutoff, plan_dir=tmp_path / "plan")
    assert sorted(rehearsal.held) == pair
    assert rehearsal.converted == rehearsal.census.to_convert - 2
    held_findings = [f for f in rehearsal.findings if f.code == "DUPLICATE_ID_NUMBER"]
    assert held_findings and all(f.action == HELD_ACTION for f in held_findings)

    assert rehearsal.plan_path is not None
    result = run_cutover(engine, profile, cutoff, expect=rehearsal.plan_path)
    assert result.plan_comparison is not None and result.plan_comparison.matches
    assert result.converted == rehearsal.converted
    assert sorted(result.held) == pair
    with engine.connect() as conn:
        types = dict(
            conn.execute(select(R.c.record_id, R.c.hukou_type).where(R.c.record_id.in_(pair))).all()
        )
        states = set(conn.execute(select(HOLDS.c.state)).scalars())
    assert types == {pair[0]: "自理户口", pair[1]: "地方城镇居民户口"}  # kept as they were
    assert states == {"held"}
    check = verify_run(engine)
    assert check.ok, check.discrepancies()

    # nothing resolved yet: the same command converts nothing more
    again = run_cutover(engine, profile, cutoff)
    assert (again.outcome, again.released) == ("already-complete", 0)

    # the duplicate is resolved in the register: the same command converts both, in the same run
    with engine.begin() as conn:
        conn.execute(
            update(R)
            .where(R.c.record_id == pair[1])
            .values(id_number=ident("330211", "19700315", 201))
        )
    released = run_cutover(engine, profile, cutoff)
    assert (released.outcome, released.released) == ("released", 2)
    assert released.run_id == result.run_id
    assert released.converted == result.converted + 2
    assert released.held == {}
    with engine.connect() as conn:
        types = dict(
            conn.execute(select(R.c.record_id, R.c.hukou_type).where(R.c.record_id.in_(pair))).all()
        )
    assert set(types.values()) == {"居民户口"}
    check = verify_run(engine)
    assert check.ok, check.discrepancies()


def test_unknown_hold_back_code_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="NOT_A_CODE"):
        load_profile(str(_profile(tmp_path, '["NOT_A_CODE"]')))


def test_the_rehearsal_workbook_lists_what_the_run_converts(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    from openpyxl import load_workbook

    from hukou_convert.workbook import write_run_workbook

    profile = load_profile(str(_profile(tmp_path)))
    import_register(engine, sample_csv)
    pair = _duplicates(engine)
    rehearsal = rehearse(engine, profile, resolve_cutoff(profile, None))
    written = write_run_workbook(engine, rehearsal, tmp_path / "reports")
    assert written.detail_rows == rehearsal.converted
    wb = load_workbook(written.path, read_only=True)
    keys = {r[0] for r in wb["变更明细"].iter_rows(min_row=2, values_only=True)}
    assert not keys & set(pair)
    summary = {r[0]: r[1] for r in wb["概要"].iter_rows(values_only=True) if len(r) > 1 and r[0]}
    assert summary["暂缓转换（待人工核查）"] == 2
    actions = [r for r in wb["异常清单"].iter_rows(values_only=True) if HELD_ACTION in r]
    assert len(actions) == 2
    assert written.verdict_ok


def test_a_hold_resolved_by_cancelling_the_record_is_dropped_not_converted(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    profile = load_profile(str(_profile(tmp_path)))
    cutoff = resolve_cutoff(profile, None)
    import_register(engine, sample_csv)
    pair = _duplicates(engine)
    result = run_cutover(engine, profile, cutoff)
    # the usual resolution of a duplicate: the wrong record is cancelled
    with engine.begin() as conn:
        conn.execute(update(R).where(R.c.record_id == pair[1]).values(status="注销"))
    released = run_cutover(engine, profile, cutoff)
    assert (released.outcome, released.released) == ("released", 1)
    assert released.converted == result.converted + 1
    with engine.connect() as conn:
        states = dict(conn.execute(select(HOLDS.c.record_id, HOLDS.c.state)).all())
        types = dict(
            conn.execute(select(R.c.record_id, R.c.hukou_type).where(R.c.record_id.in_(pair))).all()
        )
    assert states == {pair[0]: "released", pair[1]: "dropped"}
    assert types == {pair[0]: "居民户口", pair[1]: "地方城镇居民户口"}  # never marked converted
    check = verify_run(engine)
    assert check.ok, check.discrepancies()


def test_the_run_keeps_the_whole_profile_file(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    from hukou_convert.runs import find_run, run_profile

    profile = load_profile(str(_profile(tmp_path)))
    import_register(engine, sample_csv)
    result = run_cutover(engine, profile, resolve_cutoff(profile, None))
    _profile(tmp_path).unlink()  # the file is gone later; the run still knows what it used
    kept = run_profile(engine, find_run(engine, result.run_id))
    assert kept.hold_back == ("DUPLICATE_ID_NUMBER",)
    assert kept.freeze_start == profile.freeze_start and kept.cutoff == profile.cutoff
    assert kept.fingerprint() == profile.fingerprint()


def test_the_confirmation_counts_what_will_be_converted(
    sqlite_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from hukou_convert.cli import cli

    runner = CliRunner()
    runner.invoke(cli, ["import", str(sample_csv), "-q", "--db", sqlite_url])
    profile = str(_profile(tmp_path))
    rehearsal = runner.invoke(
        cli, ["cutover", "-p", profile, "--dry-run", "-q", "--db", sqlite_url]
    )
    to_convert = next(
        int(x.split()[-1]) for x in rehearsal.stdout.splitlines() if "to convert" in x
    )
    asked = runner.invoke(cli, ["cutover", "-p", profile, "-q", "--db", sqlite_url], input="n\n")
    assert asked.exit_code == 11
    assert f"Convert {to_convert} records (2 held back for review)" in asked.stderr
