"""Population statistics against independent counts, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, or_, select

from hukou_convert import schema
from hukou_convert.cli import cli
from hukou_convert.codes import NATURE_LABELS, Nature
from hukou_convert.cutover import run_cutover
from hukou_convert.divisions import by_code, import_divisions
from hukou_convert.errors import RegisterStateError
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.stats import population_stats, write_stats

from .test_divisions import SHIPPED, write_divisions
from .test_workbook import assert_no_formula, table

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
R, H = schema.register, schema.history
NOT_PERMANENT = ["0", "7", "未落常住户口", "暂住户口"]


def _shipped_urban_rural() -> dict[str, str]:
    with SHIPPED.open(encoding="utf-8") as fh:
        return {r["code"]: r["urban_rural_code"] for r in csv.DictReader(fh)}


def _setup(engine: Engine, sample_csv: Path, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Import and convert the sample; import a division file that renames the district, gives a
    township a formula-like name and makes the most populous rural village urban."""
    import_register(engine, sample_csv)
    run = run_cutover(engine, ZHENHAI, resolve_cutoff(ZHENHAI, None))
    kinds = _shipped_urban_rural()
    with engine.connect() as conn:
        codes = conn.execute(select(R.c.division_code).where(R.c.status == "正常")).scalars()
        village = next(
            c for c, _ in Counter(codes).most_common() if kinds.get(c, "").startswith("2")
        )
    shipped = by_code()[village]
    write_divisions(
        tmp_path / "div.csv",
        [
            ["330211000000", "镇海区（测试名）", "3", "330200000000", ""],
            ["330211002000", "=1+1街道", "4", "330211000000", ""],
            [village, shipped.name, "5", shipped.parent_code, "111"],
        ],
    )
    import_divisions(engine, tmp_path / "div.csv")
    kinds[village] = "111"
    return str(run.run_id), kinds


def _expected(engine: Engine, run_id: str, kinds: dict[str, str], digits: int) -> dict[str, Any]:
    """Independent counts: plain selects, classified and grouped here."""
    with engine.connect() as conn:
        history = conn.execute(
            select(H.c.division_code, H.c.original_nature).where(
                H.c.run_id == run_id, H.c.reverted_at.is_(None)
            )
        ).all()
        registered = (
            conn.execute(
                select(R.c.division_code).where(
                    R.c.division_code.like("330211%"),
                    R.c.status == "正常",
                    or_(R.c.hukou_type.is_(None), R.c.hukou_type.notin_(NOT_PERMANENT)),
                )
            )
            .scalars()
            .all()
        )
    area = lambda code: code[:digits].ljust(12, "0")  # noqa: E731
    converted: dict[str, Counter[str]] = {}
    for code, nature in history:
        converted.setdefault(area(code), Counter())[nature] += 1
    urban: dict[str, Counter[str]] = {}
    for code in registered:
        kind = {"1": "urban", "2": "rural"}.get(kinds.get(code, "")[:1], "unknown")
        urban.setdefault(area(code), Counter())[kind] += 1
    return {
        "converted": converted,
        "urban": urban,
        "history": len(history),
        "registered": len(registered),
    }


@pytest.mark.parametrize("by", ["county", "township"])
def test_stats_match_independent_counts(
    engine: Engine, db_url: str, sample_csv: Path, tmp_path: Path, by: str
) -> None:
    run_id, kinds = _setup(engine, sample_csv, tmp_path)
    result = population_stats(engine, by="township" if by == "township" else "county")
    assert result.run_id == run_id
    expected = _expected(engine, run_id, kinds, 6 if by == "county" else 9)
    assert {a.code for a in result.areas} == set(expected["converted"]) | set(expected["urban"])
    for area in result.areas:
        assert {n.value: k for n, k in area.converted.items() if k} == dict(
            expected["converted"].get(area.code, {})
        )
        counts = expected["urban"].get(area.code, Counter())
        assert (area.urban, area.rural, area.unknown) == (
            counts["urban"],
            counts["rural"],
            counts["unknown"],
        )
        if area.urban + area.rural:
            assert area.rate == pytest.approx(area.urban / (area.urban + area.rural))
    total = result.total
    assert (
        total.converted_total == expected["history"] == sum(a.converted_total for a in result.areas)
    )
    assert total.registered == expected["registered"] == sum(a.registered for a in result.areas)
    assert total.urban == sum(a.urban for a in result.areas) > 0
    assert total.rural == sum(a.rural for a in result.areas) > 0
    assert total.rate == pytest.approx(total.urban / (total.urban + total.rural))
    names = {a.code: a.name for a in result.areas}
    if by == "county":
        assert names == {"330211000000": "镇海区（测试名）"}  # the imported name wins
    else:
        assert names["330211002000"] == "=1+1街道" and names["330211001000"] == "招宝山街道"
        assert {a.county_name for a in result.areas} == {"镇海区（测试名）"}

    # xlsx read back: the table equals the result, the chart is there, no formula anywhere
    xlsx_path = write_stats(result, tmp_path / f"stats-{by}.xlsx")
    assert_no_formula(xlsx_path)
    assert (tmp_path / f"stats-{by}.xlsx.sha256").exists()
    assert oct(xlsx_path.stat().st_mode & 0o777) == "0o600"
    wb = openpyxl.load_workbook(xlsx_path)
    assert wb.sheetnames == ["概要", "人口统计"]
    rows = table(wb["人口统计"])
    key = "区县代码" if by == "county" else "乡镇（街道）代码"
    assert [r[key] for r in rows[:-1]] == [a.code for a in result.areas]
    assert rows[-1]["区县代码"] == "合计"
    assert rows[-1]["户籍人口合计"] == total.registered
    assert rows[-1]["转换合计（人）"] == total.converted_total
    assert rows[-1]["户籍人口城镇化率"] == pytest.approx(total.rate)
    for nature in Nature:
        column = f"转换：{NATURE_LABELS[nature]}（人）"
        assert sum(r[column] for r in rows[:-1]) == rows[-1][column] == total.converted[nature]
    assert len(wb["人口统计"]._charts) == 2

    # the CLI: a table on stdout, and the CSV
    runner = CliRunner()
    out = runner.invoke(cli, ["stats", "--by", by, "--db", db_url, "-q"])
    assert out.exit_code == 0, out.output
    shown = "镇海区（测试名）" if by == "county" else "=1+1街道"
    assert f"{total.rate:.2%}" in out.stdout and shown in out.stdout
    assert out.stdout.splitlines()[-1].split()[-2] == str(total.registered)
    target = tmp_path / "stats.csv"
    out = runner.invoke(
        cli, ["stats", "--run", run_id, "--by", by, "--out", str(target), "--db", db_url, "-q"]
    )
    assert out.exit_code == 0, out.output
    with target.open(encoding="utf-8-sig") as fh:
        lines = list(csv.DictReader(fh))
    assert [r["户籍人口合计"] for r in lines] == [str(a.registered) for a in [*result.areas, total]]
    assert float(lines[-1]["户籍人口城镇化率"]) == pytest.approx(total.rate, abs=1e-6)
    if by == "township":
        assert "'=1+1街道" in {r["乡镇（街道）名称"] for r in lines}  # not a formula in Excel


def test_stats_need_a_completed_run(sqlite_url: str, sample_csv: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["stats", "--db", sqlite_url])
    assert result.exit_code == 5 and "no cutover has run" in result.stderr
    runner.invoke(cli, ["import", str(sample_csv), "--db", sqlite_url, "-q"])
    result = runner.invoke(cli, ["stats", "--run", "R-nope", "--db", sqlite_url])
    assert result.exit_code == 5 and "no run 'R-nope'" in result.stderr
    result = runner.invoke(cli, ["stats", "--out", "x.txt", "--db", sqlite_url])
    assert result.exit_code == 5  # the run is looked for first
    with pytest.raises(RegisterStateError):
        from hukou_convert.db import make_engine, parse_url

        population_stats(make_engine(parse_url(sqlite_url)))
