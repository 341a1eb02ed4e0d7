"""``--split-by``: one detail workbook per area, written by worker processes, and the city workbook
that lists them; on SQLite, PostgreSQL and MariaDB (the workers open their own connections)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import openpyxl
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from hukou_convert import schema
from hukou_convert.cli import cli
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.errors import UsageError
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.sample import SampleOptions, write_sample
from hukou_convert.workbook import rewrite_report, write_run_workbook

from .test_workbook import summary, table

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)
H = schema.history


@pytest.fixture
def converted(engine: Engine, tmp_path: Path) -> str:
    register = tmp_path / "register.csv"
    write_sample(register, SampleOptions(("330211",), 3_000, seed=5))
    import_register(engine, register)
    run = run_cutover(engine, ZHENHAI, CUTOFF)
    return str(run.run_id)


def test_one_detail_workbook_per_township_adds_up_to_the_run(
    engine: Engine, converted: str, tmp_path: Path
) -> None:
    out = tmp_path / "split"
    written = rewrite_report(engine, converted, out, split_by="township", processes=2)
    with engine.connect() as conn:
        history = {
            int(r.record_id): r.division_code
            for r in conn.execute(select(H).where(H.c.run_id == converted))
        }
    townships = Counter(code[:9] for code in history.values())
    assert [a.area[:9] for a in written.areas] == sorted(townships)
    assert sum(a.rows for a in written.areas) == written.detail_rows == len(history)

    seen: dict[int, str] = {}
    for area in written.areas:
        wb = openpyxl.load_workbook(area.path)
        assert wb.sheetnames == ["概要", "变更明细"]
        rows = table(wb["变更明细"], header_row=1)
        assert len(rows) == area.rows == townships[area.area[:9]]
        for row in rows:  # every row of the area's own township, each record once overall
            assert str(row["行政区划代码"]).startswith(area.area[:9])
            assert row["记录号"] not in seen
            seen[row["记录号"]] = row["行政区划代码"]
        assert summary(wb["概要"])["本区变更明细行数"] == area.rows
        digest = hashlib.sha256(area.path.read_bytes()).hexdigest()
        assert digest == area.sha256
        sha_file = area.path.with_name(area.path.name + ".sha256")
        assert sha_file.read_text().split()[0] == digest
    assert seen == history

    city = openpyxl.load_workbook(written.path)
    assert "变更明细" not in city.sheetnames and "分区工作簿" in city.sheetnames
    listed = table(city["分区工作簿"], header_row=1)
    assert [(r["工作簿"], r["SHA-256"]) for r in listed[:-1]] == [
        (a.path.name, a.sha256) for a in written.areas
    ]
    assert listed[-1]["变更明细行数"] == len(history)
    assert written.verdict_ok and summary(city["概要"])["核验结论"] == "通过"


def test_split_is_for_the_real_run(engine: Engine, converted: str, tmp_path: Path) -> None:
    result = rehearse(engine, ZHENHAI, CUTOFF)
    with pytest.raises(UsageError, match="--split-by"):
        write_run_workbook(engine, result, tmp_path, split_by="county")


def test_report_split_by_county_command(db_url: str, tmp_path: Path) -> None:
    register = tmp_path / "register.csv"
    write_sample(register, SampleOptions(("330211",), 800, seed=6))
    runner = CliRunner()
    common = ["--db", db_url, "-q"]
    assert runner.invoke(cli, ["import", str(register), *common]).exit_code == 0
    ran = runner.invoke(
        cli,
        [
            "cutover",
            "-p",
            "zhenhai",
            "--yes",
            "--split-by",
            "county",
            "--out",
            str(tmp_path),
            *common,
        ],
    )
    assert ran.exit_code == 0, ran.output
    assert "area 330211000000 镇海区" in ran.output
    dry = runner.invoke(
        cli, ["cutover", "-p", "zhenhai", "--dry-run", "--split-by", "county", *common]
    )
    assert dry.exit_code == 2 and "--split-by" in dry.output


def test_a_failed_area_leaves_the_earlier_set_as_it_was(
    engine: Engine, converted: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hukou_convert import split

    out = tmp_path / "split"
    first = rewrite_report(engine, converted, out, split_by="township", processes=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = split._write_area
    calls = []

    def failing(job: object, engine: object = None) -> object:
        calls.append(job)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", "area.xlsx")
        return real(job, engine)  # type: ignore[arg-type]

    monkeypatch.setattr(split, "_write_area", failing)
    with pytest.raises(OSError, match="No space left"):
        rewrite_report(engine, converted, out, split_by="township", processes=1)
    assert len(calls) == 3  # no area started after the failure
    # the earlier set, city workbook included, byte for byte; no staging directory left
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(first.areas) > 3
