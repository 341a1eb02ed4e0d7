"""The bad-input corpus (``tests/corpus/``, rebuilt by ``tests/corpus/build.py``) through the command
line: every file gives a clear message naming the file, and the line and column where they apply;
exit 3 when nothing could be loaded, else exit 0 with a reject file naming line, column and reason;
never a traceback.
"""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from hukou_convert import schema
from hukou_convert.cli import cli
from hukou_convert.db import make_engine, parse_url

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
    # Decided: a formula is read by its cached value; a workbook never recalculated by Excel has
    # none, so the cell loads as empty (loaded, and the checks report the empty field).
    "formulas.xlsx": (3, []),
    # Decided: a merged range has its value in the top-left cell only; the others load as empty.
    "merged_cells.xlsx": (3, []),
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


def test_formula_and_merged_cells_load_as_empty(sqlite_url: str, tmp_path: Path) -> None:
    engine = make_engine(parse_url(sqlite_url))
    assert _import(CORPUS / "formulas.xlsx", sqlite_url, tmp_path / "r1.csv")[0] == 0
    with engine.connect() as conn:
        rows = conn.execute(select(R.c.name, R.c.hukou_type).order_by(R.c.source_line)).all()
    assert [tuple(r) for r in rows] == [("张明", "2"), (None, "2"), ("张明", None)]

    other = f"sqlite:///{tmp_path / 'merged.db'}"
    assert _import(CORPUS / "merged_cells.xlsx", other, tmp_path / "r2.csv")[0] == 0
    merged = make_engine(parse_url(other))
    with merged.connect() as conn:
        households = conn.execute(select(R.c.household_id).order_by(R.c.source_line)).scalars()
        assert list(households) == ["H1", None, None]
    for e in (engine, merged):
        e.dispose()


def test_corpus_builder_reproduces_the_checked_in_files(tmp_path: Path) -> None:
    """The checked-in corpus is what build.py makes (the text files byte for byte)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("corpus_build", CORPUS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, data in module.text_files().items():
        assert (CORPUS / name).read_bytes() == data, name
