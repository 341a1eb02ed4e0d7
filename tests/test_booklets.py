"""The booklet replacement list against the register and the history, on three databases."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import openpyxl
from click.testing import CliRunner
from sqlalchemy import Engine, select, update

from hukou_convert import schema
from hukou_convert.booklets import booklet_households
from hukou_convert.cli import cli
from hukou_convert.cutover import run_cutover
from hukou_convert.idnumbers import mask_id, mask_name
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff

from .test_workbook import assert_no_formula, table

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
R, H = schema.register, schema.history


def test_booklet_list_matches_the_history(
    engine: Engine, db_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    import_register(engine, sample_csv)
    run = run_cutover(engine, ZHENHAI, resolve_cutoff(ZHENHAI, None))
    with engine.begin() as conn:  # a head whose name a spreadsheet would read as a formula
        conn.execute(
            update(R)
            .where(R.c.household_id == "3302110030000001", R.c.relation == "本人")
            .values(name="=HYPERLINK(1)")
        )
    with engine.connect() as conn:
        converted = conn.execute(
            select(R.c.household_id, H.c.original_code)
            .join(R, R.c.record_id == H.c.record_id)
            .where(H.c.run_id == run.run_id, H.c.reverted_at.is_(None))
        ).all()
        register = conn.execute(
            select(
                R.c.household_id,
                R.c.status,
                R.c.relation,
                R.c.name,
                R.c.id_number,
                R.c.police_station,
            )
        ).all()
    per_household = Counter(h for h, _ in converted)
    codes: dict[str | None, set[str]] = {}
    for h, code in converted:
        codes.setdefault(h, set()).add(code)
    members = Counter(h for h, status, *_ in register if status == "正常")
    heads = {
        h: (name, number, station)
        for h, status, rel, name, number, station in register
        if status == "正常" and rel in ("本人", "户主")
    }

    listed = list(booklet_households(engine, str(run.run_id)))
    assert sorted(hh.household_id or "" for hh in listed) == sorted(h or "" for h in per_household)
    assert sum(hh.converted for hh in listed) == run.converted
    labels = {
        "1": "非农业家庭户口",
        "2": "农业家庭户口",
        "3": "非农业集体户口",
        "4": "农业集体户口",
    }
    for hh in listed:
        assert hh.converted == per_household[hh.household_id]
        assert hh.members == members[hh.household_id]
        assert {labels.get(c, c) for c in codes[hh.household_id]} <= set(hh.types_shown) | set(
            codes[hh.household_id]
        )
        assert len(hh.types_shown) == len(codes[hh.household_id])
        if hh.household_id in heads:
            assert (hh.head_name, hh.head_id_number, hh.station) == heads[hh.household_id]
        else:
            assert hh.head_name is None
    stations = [hh.station for hh in listed]
    assert stations == sorted(stations, key=stations.index)  # grouped by station
    assert len(set(stations)) > 1

    runner = CliRunner()
    for unmasked in (False, True):
        out = tmp_path / ("full.xlsx" if unmasked else "masked.xlsx")
        args = ["booklets", "--run", str(run.run_id), "--out", str(out), "--db", db_url, "-q"]
        result = runner.invoke(cli, args + (["--unmasked"] if unmasked else []))
        assert result.exit_code == 0, result.output
        assert f"{len(listed):>8} households" in result.stdout
        assert_no_formula(out)
        wb = openpyxl.load_workbook(out)
        assert wb.sheetnames == ["概要", "换发清单"]
        rows = table(wb["换发清单"])
        assert len(rows) == len(listed)
        by_household = {r["户号"]: r for r in rows}
        for hh in listed:
            row = by_household[hh.household_id]
            assert row["派出所"] == hh.station
            assert row["本次转换人数"] == hh.converted and row["在册人数"] == hh.members
            assert row["户口簿所示户口类别（已取消）"] == "、".join(hh.types_shown)
            if hh.head_id_number:
                shown = hh.head_id_number if unmasked else mask_id(hh.head_id_number)
                assert row["户主公民身份号码"] == shown
                assert row["户主姓名"] == (hh.head_name if unmasked else mask_name(hh.head_name))
        formula = by_household["3302110030000001"]["户主姓名"]
        assert formula == ("=HYPERLINK(1)" if unmasked else mask_name("=HYPERLINK(1)"))
        text = "".join(str(c.value) for row in wb["换发清单"].iter_rows() for c in row)
        numbers = [hh.head_id_number for hh in listed if hh.head_id_number]
        assert any(n in text for n in numbers) is unmasked
        assert not any(n in result.stdout for n in numbers)
        assert ("未脱敏" in str(wb["概要"]["A2"].value)) is unmasked


def test_booklets_need_a_completed_run(sqlite_url: str) -> None:
    result = CliRunner().invoke(cli, ["booklets", "--db", sqlite_url])
    assert result.exit_code == 5 and "no cutover has run" in result.stderr
