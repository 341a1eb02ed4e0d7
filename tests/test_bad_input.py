"""The bad-input corpus (``tests/corpus/``, rebuilt by ``tests/corpus/build.py``) through the command
line: every file gives a clear message naming the file, and the line and column where they apply;
exit 3 when nothing could be loaded, else exit 0 with a reject file naming line, column and reason,
and a warning on stderr for each cell whose value is not simply in the file (a formula's cached
value, a formula with none, the cells of a merged range); never a traceback.
"""

from __future__ import annotations

import csv
import os
import re
import stat
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner
from openpyxl import Workbook
from sqlalchemy import select

from hukou_convert import schema
from hukou_convert.cli import cli
from hukou_convert.db import make_engine, parse_url
from hukou_convert.ingest import import_applications, import_register
from hukou_convert.rowplan import NO_CACHED_VALUE

CORPUS = Path(__file__).resolve().parent / "corpus"
R = schema.register

# file -> the fragments its one-line message must hold (exit 3, nothing loaded)
UNREADABLE = {
    "utf16.csv": ["line 1", "contains NUL bytes"],
    "big5_bytes.csv": ["line 4", "cannot be decoded as utf-8 or gbk or gb18030"],
    "truncated_utf8.csv": ["line 5", "truncated multibyte character at the end of the file"],
    "truncated_gbk_mid.csv": ["line 4", "gbk: invalid byte sequence at line 4"],
    "nul_bytes.csv": ["line 3", "contains NUL bytes"],
    "missing_column.csv": ["line 1", "lacks required column(s): 户口性质/hukou_type"],
    "duplicate_header.csv": ["line 1, column J", "both give id_number"],
    "header_only.csv": ["no row could be loaded", "nothing was imported"],
    "empty.csv": ["empty (0 bytes)"],
    "binary.csv": ["line 1", "NUL bytes"],
    "zip_named.csv": ["ZIP/xlsx file named .csv"],
    "text_named.xlsx": ["not a readable .xlsx workbook"],
}

# file -> (rows loaded, [(line, column, reason fragment)] in the reject file)
PARTLY = {
    "utf8.csv": (3, []),
    "utf8_bom.csv": (3, []),
    "gbk.csv": (2, []),
    "gb18030.csv": (3, []),
    "utf8_crlf_tab.csv": (3, []),
    "bad_rows.csv": (
        1,
        [
            ("3", "D (出生日期)", "is not a date that exists"),
            ("4", "D (出生日期)", "is not a date (YYYY-MM-DD or YYYYMMDD)"),
            ("5", "C (性别)", "is not 男/女 or 1/2"),
            ("6", "", "4 fields where the header has 9"),
        ],
    ),
    # The quote opened on line 3 is never closed: the parser reads to the end of the file, so
    # the rest of the file is one rejected record (kept whole in the reject file, not loaded).
    "unbalanced_quotes.csv": (1, [("3", "", "cannot be split into fields")]),
    "error_cells.xlsx": (
        1,
        [("3", "F (户口性质)", "Excel error value #N/A"), ("4", "H (行政区划代码)", "#REF!")],
    ),
    "dates_as_text.xlsx": (
        3,
        [
            ("4", "D (出生日期)", "'1980/1/1' is not a date"),
            ("6", "D (出生日期)", "'01/02/1980' is not a date"),
        ],
    ),
    # A formula is read by its cached value (a warning says so). A workbook never recalculated
    # has none: in a required column the row is rejected, in another it loads as empty (warned).
    "formulas.xlsx": (
        3,
        [("3", "B (姓名)", NO_CACHED_VALUE), ("4", "F (户口性质)", NO_CACHED_VALUE)],
    ),
    # A merged range has its value in its first cell only; the others are empty in the file and
    # load as empty (a warning names the range; 户号 may be empty, so nothing is rejected).
    "merged_cells.xlsx": (3, []),
}

# file -> the warnings on stderr after "hukou-convert: warning: FILE, " (none for the others)
WARNINGS = {
    "formulas.xlsx": [
        "line 5, column D (出生日期): a formula with no cached value (the workbook was saved"
        " without calculating it): loaded as empty",
        "line 6, column B (姓名): a formula: the value loaded is its cached value (the result"
        " last saved with the workbook)",
    ],
    "merged_cells.xlsx": [
        "lines 3-4, column E (户号): merged range E2:E4: the cells under it other than the first"
        " (E2) are empty in the file and are read as empty",
    ],
}


def _import(path: Path, url: str, rejects: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, ["import", str(path), "-q", "--rejects", str(rejects), "--db", url]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.stdout, result.stderr


def test_corpus_is_complete() -> None:
    built = {p.name for p in CORPUS.iterdir() if p.suffix in (".csv", ".xlsx")}
    assert built == set(UNREADABLE) | set(PARTLY)


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_file_loads_nothing(name: str, sqlite_url: str, tmp_path: Path) -> None:
    rejects = tmp_path / "rejects.csv"
    code, out, err = _import(CORPUS / name, sqlite_url, rejects)
    assert code == 3, (out, err)
    assert "Traceback" not in out + err
    [line] = err.strip().splitlines()
    assert line.startswith(f"hukou-convert: {CORPUS / name}")
    for fragment in UNREADABLE[name]:
        assert fragment in line
    engine = make_engine(parse_url(sqlite_url))
    if schema.has_register(engine):
        with engine.connect() as conn:
            assert conn.execute(select(R)).first() is None
            assert conn.execute(select(schema.imports)).first() is None
    engine.dispose()
    assert not rejects.exists() or name == "header_only.csv"


@pytest.mark.parametrize("name", sorted(PARTLY))
def test_partly_readable_file_loads_the_rest_and_rejects_with_reasons(
    name: str, sqlite_url: str, tmp_path: Path
) -> None:
    loaded, expected = PARTLY[name]
    rejects = tmp_path / "rejects.csv"
    code, out, err = _import(CORPUS / name, sqlite_url, rejects)
    assert code == 0, (out, err)
    assert "Traceback" not in out + err
    assert f"persons: {loaded} loaded, {len(expected)} rejected from {CORPUS / name}" in out
    assert err.splitlines() == [
        f"hukou-convert: warning: {CORPUS / name}, {w}" for w in WARNINGS.get(name, [])
    ]
    if not expected:
        assert not rejects.exists()
        return
    assert stat.S_IMODE(os.stat(rejects).st_mode) == 0o600
    with rejects.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    assert len(rows) == len(expected)
    for (line, column, reason, original), (want_line, want_column, fragment) in zip(
        rows, expected, strict=True
    ):
        assert (line, column) == (want_line, want_column)
        assert fragment in reason
        assert original  # the record as read, for the person who fixes the export


def test_unbalanced_quote_keeps_what_follows_in_the_reject_file(
    sqlite_url: str, tmp_path: Path
) -> None:
    rejects = tmp_path / "rejects.csv"
    assert _import(CORPUS / "unbalanced_quotes.csv", sqlite_url, rejects)[0] == 0
    with rejects.open(encoding="utf-8-sig", newline="") as fh:
        [_, row] = list(csv.reader(fh))
    assert "330211198001010052" in row[3]  # line 5, swallowed by the open quote: not lost


def test_formula_and_merged_cells_load_what_the_file_holds(sqlite_url: str, tmp_path: Path) -> None:
    """The value loaded is a formula's cached value, never its text; one with no cached value
    loads as empty in an optional column; a merged range's cells other than the first load as
    empty. The import result says so for each, naming file, line and column, and no ID number."""
    engine = make_engine(parse_url(sqlite_url))
    result = import_register(engine, CORPUS / "formulas.xlsx", reject_path=tmp_path / "r1.csv")
    notes = list(result.notes)
    assert (result.loaded, result.rejected) == (3, 2)
    with engine.connect() as conn:
        rows = conn.execute(
            select(R.c.source_line, R.c.name, R.c.hukou_type, R.c.birth_date).order_by(
                R.c.source_line
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (2, "张明", "2", date(1980, 1, 1)),
        (5, "张明", "2", None),
        (6, "王芳", "2", date(1980, 1, 1)),
    ]
    assert result.notes == [f"{CORPUS / 'formulas.xlsx'}, {w}" for w in WARNINGS["formulas.xlsx"]]

    other = f"sqlite:///{tmp_path / 'merged.db'}"
    merged = make_engine(parse_url(other))
    result = import_register(merged, CORPUS / "merged_cells.xlsx", reject_path=tmp_path / "r2.csv")
    assert (result.loaded, result.rejected) == (3, 0)
    with merged.connect() as conn:
        households = conn.execute(select(R.c.household_id).order_by(R.c.source_line)).scalars()
        assert list(households) == ["H1", None, None]
    assert result.notes == [
        f"{CORPUS / 'merged_cells.xlsx'}, {w}" for w in WARNINGS["merged_cells.xlsx"]
    ]
    for e in (engine, merged):
        e.dispose()
    assert not re.search(r"\d{15}", "\n".join(notes + result.notes))  # no ID number


def _workbook(
    path: Path, header: str, rows: list[list[object]], merges: tuple[str, ...] = ()
) -> Path:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(header.split(","))
    for row in rows:
        ws.append(row)
    for cells in merges:
        ws.merge_cells(cells)
    wb.save(path)
    return path


PERSON = "公民身份号码,姓名,性别,出生日期,户号,户口性质,户别,行政区划代码,人员状态"


def _person(seq: int) -> list[object]:
    values = f"33021119800101{seq:04d},张明,男,1980-01-01,H{seq},2,家庭户,330211001001,正常"
    return list(values.split(","))


def test_a_merged_range_in_a_required_column_is_named_in_the_reject(
    sqlite_url: str, tmp_path: Path
) -> None:
    """An application's 申请时间 under a merged range is empty: rejected as any empty required
    value, the reason naming the range."""
    rows: list[list[object]] = [
        [f"A{n}", f"33021119800101{n:04d}", "农转非", "2016-08-01 10:00", "待审批"]
        for n in (1, 2, 3)
    ]
    header = "业务编号,公民身份号码,业务类型,申请时间,审批状态"
    _workbook(tmp_path / "apps.xlsx", header, rows, ("D2:D3",))
    engine = make_engine(parse_url(sqlite_url))
    result = import_applications(engine, tmp_path / "apps.xlsx", reject_path=tmp_path / "r.csv")
    assert (result.loaded, result.rejected) == (2, 1)
    with (tmp_path / "r.csv").open(encoding="utf-8-sig", newline="") as fh:
        [_, (line, column, reason, _original)] = list(csv.reader(fh))
    assert (line, column) == ("3", "D (申请时间)")
    assert (
        reason == "required value is empty (under the merged range D2:D3: only D2 holds its value)"
    )
    assert result.notes == [
        f"{tmp_path / 'apps.xlsx'}, line 3, column D (申请时间): merged range D2:D3: the cells"
        " under it other than the first (D2) are empty in the file and are read as empty"
    ]
    engine.dispose()


def test_formula_and_merged_warnings_list_the_first_few_and_count_the_rest(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A large sheet keeps at most a bounded number of listed cells: 20 formula cells and 20
    merged ranges are named, the rest counted. Formulas and merges in a column the import does
    not read (备注) say nothing; a row whose only content is a formula with no cached value is
    rejected if the import reads that column, else skipped as blank."""
    rows: list[list[object]] = []
    for seq in range(1, 51):
        row = [*_person(seq), "=1+1"]  # 备注: not read
        row[3] = "=DATE(1980,1,1)"  # 出生日期: optional, no cached value
        rows.append(row)
    rows.append([None, None, None, "=DATE(1980,1,1)"])  # line 52: only a formula
    rows.append([*[None] * 9, "=1+1"])  # line 53: only a formula in a column not read
    # 24 ranges over 户号 (the 户号 of lines 3, 5… lost), one over 备注 (not read)
    merges = (*(f"E{first}:E{first + 1}" for first in range(2, 50, 2)), "J2:J3")
    path = _workbook(tmp_path / "many.xlsx", f"{PERSON},备注", rows, merges)

    engine = make_engine(parse_url(sqlite_url))
    result = import_register(engine, path, reject_path=tmp_path / "r.csv")
    assert (result.loaded, result.rejected) == (50, 1)
    merged = [n for n in result.notes if ": merged range " in n]
    formulas = [n for n in result.notes if ": a formula" in n]
    assert len(merged) == 20 and len(formulas) == 20
    assert merged[0] == (
        f"{path}, line 3, column E (户号): merged range E2:E3: the cells under it other than"
        " the first (E2) are empty in the file and are read as empty"
    )
    assert formulas[0] == (
        f"{path}, line 2, column D (出生日期): a formula with no cached value (the workbook was"
        " saved without calculating it): loaded as empty"
    )
    assert result.notes[20] == f"{path}: 4 more merged ranges not listed"
    assert result.notes[-1] == (
        f"{path}: 30 more formula cells not listed (0 loaded with their cached value, 30 with"
        " none, loaded as empty)"
    )
    assert len(result.notes) == 42
    with (tmp_path / "r.csv").open(encoding="utf-8-sig", newline="") as fh:
        [_, (line, column, reason, _original)] = list(csv.reader(fh))
    assert (line, column, reason) == ("52", "D (出生日期)", NO_CACHED_VALUE)
    engine.dispose()


def test_corpus_builder_reproduces_the_checked_in_files(tmp_path: Path) -> None:
    """The checked-in corpus is what build.py makes (the text files byte for byte)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("corpus_build", CORPUS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, data in module.text_files().items():
        assert (CORPUS / name).read_bytes() == data, name
