"""Bulk identity look-up: a department's file in, every row answered, masked, on three databases."""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

from click.testing import CliRunner
from openpyxl import Workbook, load_workbook
from sqlalchemy import Engine

from hukou_convert.cli import cli
from hukou_convert.cutover import run_cutover
from hukou_convert.identity import lookup_file
from hukou_convert.idnumbers import upgrade15
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.rollback import rollback_run

from .helpers import ident

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)
COLLECTIVE = ident("330211", "20000101", 22)  # 集体丙: code 4, converted
RESIDENT = ident("330211", "19850505", 52)  # 居民0: already resident, never converted
OLD15 = "330211750101123"  # 老号壬: registered with its old 15-digit number, code 2
X_ID = next(
    ident("330211", "19911111", s)
    for s in range(81, 999, 2)
    if ident("330211", "19911111", s).endswith("X")
)  # 数字辛, registered with a lower-case x


def _department_csv(path: Path) -> Path:
    """As another department sends it: GBK, a header we do not know, stray spaces."""
    rows = [
        ["序号", "证件号", "姓名"],
        ["1", f" {COLLECTIVE.lower()} ", "集体丙"],
        ["2", RESIDENT, "居民零"],
        ["3", _upgraded(OLD15), "老号壬"],
        ["4", X_ID.lower(), "数字辛"],
        ["5", "12345", "无效"],
        ["6", X_ID[:6] + X_ID[8:17], "数字辛"],  # the old 15-digit form asked
    ]
    with path.open("w", encoding="gbk", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _upgraded(old15: str) -> str:
    upgraded = upgrade15(old15)
    assert upgraded is not None
    return upgraded


def test_every_row_is_answered_and_masked(engine: Engine, sample_csv: Path, tmp_path: Path) -> None:
    import_register(engine, sample_csv)
    run = run_cutover(engine, ZHENHAI, CUTOFF)
    out = tmp_path / "out" / "answer.xlsx"
    result = lookup_file(engine, _department_csv(tmp_path / "ids.csv"), out)
    assert result.id_column == "证件号"
    assert result.rows == 6
    assert result.by_status == {"found": 4, "not-found": 1, "invalid": 1}
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    ws = load_workbook(out, read_only=True).worksheets[0]
    rows = [list(r) for r in ws.iter_rows(values_only=True)]
    header, body = rows[0], rows[1:]
    assert header[:3] == ["序号", "证件号", "姓名"] and header[3] == "查询结果"
    assert [r[0] for r in body] == ["1", "2", "3", "4", "5", "6"]  # every row, in order
    first = dict(zip(header, body[0], strict=False))
    assert first["证件号"] == COLLECTIVE[:6] + "********" + COLLECTIVE[-4:]
    assert first["姓名"] == "集**"
    assert (first["查询结果"], first["原户口类型"], first["户别"]) == (
        "已转换",
        "农业集体户口",
        "集体户",
    )
    assert first["转换批次"] == run.run_id
    assert body[1][3] == "未找到"
    assert body[2][3] == "已转换" and body[2][4] == "农业家庭户口"  # 18-digit asked, 15 held
    assert body[3][3] == "已转换"  # lower-case x on both sides
    assert body[4][3] == "号码无效"
    # 15-digit asked, 18 held: found and said so
    assert body[5][3] == "已转换" and body[5][4:6] == body[3][4:6]
    assert "15-digit" in str(body[5][-1])
    text = out.read_bytes()
    assert COLLECTIVE.encode() not in text


def test_reverted_conversions_are_marked_and_csv_output(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    import_register(engine, sample_csv)
    run = run_cutover(engine, ZHENHAI, CUTOFF)
    rollback_run(engine, str(run.run_id))
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["身份证号", "备用"])
    ws.append([COLLECTIVE, "x"])
    source = tmp_path / "ids.xlsx"
    wb.save(source)
    out = tmp_path / "answer.csv"
    result = lookup_file(engine, source, out, unmasked=True)
    assert result.by_status == {"reverted": 1}
    with out.open(encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    assert rows[1][0] == COLLECTIVE  # unmasked on request
    assert rows[1][2] == "已回退" and "回退" in rows[1][-1]


def test_cli_bulk_lookup(db_url: str, sample_csv: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    db = ["--db", db_url]
    assert runner.invoke(cli, ["import", str(sample_csv), *db]).exit_code == 0
    assert runner.invoke(cli, ["cutover", "-p", "zhenhai", "--yes", "-q", *db]).exit_code == 0
    out = tmp_path / "r.xlsx"
    ids = _department_csv(tmp_path / "ids.csv")
    result = runner.invoke(cli, ["lookup", "--file", str(ids), "--out", str(out), "-q", *db])
    assert result.exit_code == 0, result.output
    assert "6 rows looked up" in result.stdout and "已转换 4" in result.stdout
    assert out.exists()
    missing = runner.invoke(cli, ["lookup", "--file", str(ids), *db])
    assert missing.exit_code == 2 and "--out" in missing.stderr


def test_one_person_converted_under_two_numbers_is_ambiguous(
    engine: Engine, tmp_path: Path
) -> None:
    from hukou_convert.history import lookup

    from .helpers import person, write_register

    new = ident("330211", "19650101", 11)
    old = new[:6] + new[8:17]  # the same person's old 15-digit number
    rows = [
        person(old, "2", household="H1", name="老号"),
        person(new, "1", household="H2", name="新号"),
    ]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    run_cutover(engine, ZHENHAI, CUTOFF)
    [answer] = lookup(engine, [new])
    assert answer.status == "ambiguous" and len(answer.entries) == 2
    out = tmp_path / "a.csv"
    source = tmp_path / "ids.csv"
    source.write_text(f"身份证号\n{new}\n", encoding="utf-8")
    assert lookup_file(engine, source, out).by_status == {"ambiguous": 1}


def test_csv_answers_are_formula_safe_and_headers_distinct(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    import_register(engine, sample_csv)
    run_cutover(engine, ZHENHAI, CUTOFF)
    source = tmp_path / "ids.csv"
    source.write_text(
        f'身份证号,备注\n{COLLECTIVE},"=HYPERLINK(""http://x"",""y"")"\n', encoding="utf-8"
    )
    out = tmp_path / "a.csv"
    lookup_file(engine, source, out)
    with out.open(encoding="utf-8-sig") as fh:
        header, row = list(csv.reader(fh))
    assert header[1] == "备注" and header[-1] == "备注（查询）"
    assert row[1].startswith("'=HYPERLINK")
