"""Division tables: the shipped one is valid, imports upsert in one go, bad files load nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from hukou_convert import schema
from hukou_convert.cli import cli
from hukou_convert.divisions import (
    HEADER,
    by_code,
    division_lookup,
    import_divisions,
    read_division_file,
)
from hukou_convert.errors import InputFileError
from hukou_convert.tallies import Places

SHIPPED = (
    Path(__file__).resolve().parent.parent / "hukou_convert" / "data" / "divisions_5cities.csv"
)
D = schema.divisions


def write_divisions(path: Path, rows: list[list[str]], header: tuple[str, ...] = HEADER) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_the_shipped_table_passes_the_import_checks() -> None:
    _sha, rows = read_division_file(SHIPPED)
    assert len(rows) == len(by_code()) > 12_000
    assert {d.code: d for d in rows} == by_code()


def test_import_overlays_the_shipped_table(engine: Engine, db_url: str, tmp_path: Path) -> None:
    shipped = by_code()
    assert division_lookup(engine) == shipped  # nothing imported: the shipped table
    first = write_divisions(
        tmp_path / "d1.csv",
        [
            ["330211000000", "镇海新区", "3", "330200000000", ""],
            ["330211001001", "城东社区", "5", "330211001000", "220"],  # now rural
            ["990100000000", "测试市", "2", "990000000000", ""],
        ],
    )
    result = import_divisions(engine, first)
    assert (result.rows, result.inserted, result.updated, result.unchanged) == (3, 3, 0, 0)
    assert result.in_effect == len(shipped) + 1
    table = division_lookup(engine)
    assert table["330211000000"].name == "镇海新区"
    assert table["330211001001"].is_urban is False and shipped["330211001001"].is_urban is True
    assert table["990100000000"].level == 2
    assert table["330211001000"] == shipped["330211001000"]  # untouched codes stay shipped
    places = Places.of(engine)
    assert places.name("330211000000", 3) == "镇海新区"
    assert places.is_urban("330211001001") is False
    # again, one row changed: an upsert, not a second copy
    second = write_divisions(
        tmp_path / "d2.csv",
        [
            ["330211000000", "镇海区", "3", "330200000000", ""],
            ["330211001001", "城东社区", "5", "330211001000", "220"],
        ],
    )
    result = import_divisions(engine, second)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 1)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(D)).scalar_one() == 3
        source = conn.execute(select(D.c.source).where(D.c.code == "330211000000")).scalar_one()
    assert source.startswith("d2.csv sha256:")
    assert division_lookup(engine)["330211000000"].name == "镇海区"
    # the command line: import and list
    runner = CliRunner()
    out = runner.invoke(cli, ["divisions", "import", str(first), "--db", db_url, "-q"])
    assert out.exit_code == 0, out.output
    assert "3 rows" in out.stdout and "1 updated" in out.stdout
    listed = runner.invoke(cli, ["divisions", "list", "--prefix", "3302110010", "--db", db_url])
    assert listed.exit_code == 0
    lines = listed.stdout.splitlines()
    assert lines[0] == "330211001000 4 --- 招宝山街道"
    assert "330211001001 5 220 城东社区" in lines


BAD_ROWS = [
    (["33021100100", "短", "5", "330211001000", "111"], "code", "12-digit"),
    (["330211001001", "", "5", "330211001000", "111"], "name", "empty"),
    (["330211001001", "x", "6", "330211001000", "111"], "level", "level"),
    (["330211001001", "x", "4", "330211000000", ""], "code", "3 zeros"),
    (["330211001001", "x", "5", "3302110010", "111"], "parent_code", "12-digit"),
    (["330211001001", "x", "5", "330211001000", "11"], "urban_rural_code", "3-digit"),
    (["330211001001", "x", "5", "330211001000", "311"], "urban_rural_code", "1xx"),
]


@pytest.mark.parametrize(("row", "column", "reason"), BAD_ROWS)
def test_an_invalid_row_is_named_and_nothing_loads(
    tmp_path: Path, row: list[str], column: str, reason: str
) -> None:
    good = ["330211000000", "镇海区", "3", "330200000000", ""]
    path = write_divisions(tmp_path / "bad.csv", [good, row])
    with pytest.raises(InputFileError) as err:
        read_division_file(path)
    message = err.value.message()
    assert f"line 3, column {column}:" in message and reason in message
    assert "nothing was loaded" in message


def test_bad_files_load_nothing(engine: Engine, db_url: str, tmp_path: Path) -> None:
    good = ["330211000000", "镇海区", "3", "330200000000", ""]
    duplicate = write_divisions(tmp_path / "dup.csv", [good, good])
    no_column = write_divisions(tmp_path / "hdr.csv", [good[:4]], HEADER[:4])
    binary = tmp_path / "nul.csv"
    binary.write_bytes(b"code,name\x00\n")
    for path, expected in [
        (duplicate, "line 3, column code: code already given on line 2"),
        (no_column, "column urban_rural_code"),
        (binary, "NUL"),
        (tmp_path / "missing.csv", "file not found"),
    ]:
        with pytest.raises(InputFileError, match=expected):
            import_divisions(engine, path)
    assert division_lookup(engine) == by_code()
    result = CliRunner().invoke(cli, ["divisions", "import", str(duplicate), "--db", db_url])
    assert result.exit_code == 3 and "line 3, column code" in result.stderr
