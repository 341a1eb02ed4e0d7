"""The register checks (错、重、假、漏) on SQLite, PostgreSQL and MariaDB, and the check command."""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select
from stdnum.cn import ric

from hukou_convert import schema
from hukou_convert.checks import (
    CHECKS,
    CONVERTED_AS_USUAL,
    INACTIVE_NOT_CONVERTED,
    NEVER_CONVERTED,
    AddressCodes,
    RecordFields,
    record_issues,
    run_checks,
)
from hukou_convert.cli import cli
from hukou_convert.idnumbers import mask_id
from hukou_convert.ingest import import_register
from hukou_convert.instants import CST
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff

from .helpers import ident, person, write_register

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None).instant  # 2016-09-30 24:00 +08:00


def _check18(first17: str) -> str:
    """The full number by python-stdnum's own check computation (independent of idnumbers)."""
    return first17 + ric.calc_check_digit(first17 + "0")


def _wrong_check(number: str) -> str:
    return number[:17] + ("0" if number[17] != "0" else "1")


def _row(key: str, number: str, **fields: str) -> dict[str, str]:
    """A register row that is clean unless told otherwise: own household, head of it, named key."""
    options: dict[str, Any] = {"household": f"H-{key}", "name": key}
    relation = fields.pop("relation", "本人")
    options.update(fields)
    row = person(number, options.pop("htype", "2"), **options)
    row["与户主关系"] = relation
    return row


# (key, row, expected findings as (code, severity))
CASES: list[tuple[str, dict[str, str], list[tuple[str, str]]]] = []


def case(key: str, number: str, expected: list[tuple[str, str]], **fields: str) -> None:
    CASES.append((key, _row(key, number, **fields), expected))


E, W = "error", "warning"
# clean records: no finding at all
case("clean_head", ident("330211", "19800101", 1), [], household="HC")
case(
    "clean_spouse",
    ident("330211", "19820202", 2),
    [],
    household="HC",
    relation="配偶",
    sex="女",
    birth="1982-02-02",
)
X_ID = next(
    ident("330211", "19911111", s)
    for s in range(3, 999, 2)
    if ident("330211", "19911111", s).endswith("X")
)
case("clean_lower_x", X_ID.lower(), [], birth="1991-11-11")
case("clean_retired_code_in_time", ident("330227", "19900101", 3), [], birth="1990-01-01")
case("clean_born_before_1985", ident("330211", "19500101", 5), [], birth="1950-01-01")
case("clean_day_before_cutoff", ident("330211", "20160930", 7), [], birth="2016-09-30")
case(
    "clean_collective_a",
    ident("330211", "19800101", 9),
    [],
    htype="4",
    category="集体户",
    household="HK",
    relation="集体户成员",
)
case(
    "clean_collective_b",
    ident("330211", "19800101", 15),
    [],
    htype="4",
    category="集体户",
    household="HK",
    relation="集体户成员",
)
case("clean_no_relations", ident("330211", "19800101", 17), [], relation="")
case("clean_code_gives_category", ident("330211", "19800101", 19), [], htype="1", category="")
case("clean_two_inactive_same_id_a", ident("330211", "19800101", 25), [], status="注销")
case("clean_two_inactive_same_id_b", ident("330211", "19800101", 25), [], status="死亡")
case(
    "out_of_scope_wrong",
    _wrong_check(ident("330302", "19800101", 27)),
    [],
    division="330302001001",
    sex="女",
)
# 错 wrong
case("wrong_check", _wrong_check(ident("330211", "19800101", 29)), [("WRONG_CHECK_DIGIT", E)])
case(
    "inactive_wrong_check",
    _wrong_check(ident("330211", "19800101", 31)),
    [("WRONG_CHECK_DIGIT", E)],
    status="注销",
)
case(
    "birth_mismatch",
    ident("330211", "19800101", 33),
    [("BIRTH_DATE_MISMATCH", E)],
    birth="1980-01-02",
)
case("sex_mismatch", ident("330211", "19800101", 35), [("SEX_MISMATCH", E)], sex="女")
case(
    "division_bad",
    ident("330211", "19800101", 37),
    [("MALFORMED_DIVISION_CODE", E)],
    division="330211ABC001",
)
case("id_too_short", "33021119800101", [("MALFORMED_ID_NUMBER", E)])
case("id_date_invalid", _check18("33021119801301039"), [("MALFORMED_ID_NUMBER", E)])
case("old15", "330211800101097", [("OLD_15_DIGIT_ID", W)])
case("old15_sex", "330211800101098", [("OLD_15_DIGIT_ID", W), ("SEX_MISMATCH", E)])
# 错: the combined code says 家庭户, the 户别 column a collective household
case(
    "category_conflict",
    ident("330211", "19800101", 59),
    [("CATEGORY_CONFLICT", E)],
    htype="2",
    category="社区集体户",
    household="HC",
    relation="集体户成员",
)
# 重: the same person once with the old 15-digit number and once with the 18-digit one
case(
    "dup15_old",
    "330211800101057",
    [("OLD_15_DIGIT_ID", W), ("DUPLICATE_ID_NUMBER", E)],
    household="H15",
)
case("dup15_new", ident("330211", "19800101", 57), [("DUPLICATE_ID_NUMBER", E)], household="H18")
# 重 duplicate
case("dup_id_a", ident("330211", "19800101", 41), [("DUPLICATE_ID_NUMBER", E)])
case("dup_id_b", ident("330211", "19800101", 41), [("DUPLICATE_ID_NUMBER", E)])
case(
    "dup_id_c_inactive",
    ident("330211", "19800101", 41),
    [("DUPLICATE_ID_NUMBER", E)],
    status="注销",
)
case("dup_trail_active", ident("330211", "19800101", 43), [("DUPLICATE_ID_WITH_INACTIVE", W)])
case(
    "dup_trail_cancelled",
    ident("330211", "19800101", 43),
    [("DUPLICATE_ID_WITH_INACTIVE", W)],
    status="注销",
)
case(
    "dup_person_a",
    ident("330211", "19850505", 45),
    [("DUPLICATE_PERSON_IN_HOUSEHOLD", E)],
    household="HP",
    name="重名",
    birth="1985-05-05",
)
case(
    "dup_person_b",
    ident("330211", "19850505", 47),
    [("DUPLICATE_PERSON_IN_HOUSEHOLD", E)],
    household="HP",
    name="重名",
    birth="1985-05-05",
    relation="子",
)
case(
    "dup_person_cancelled",
    ident("330211", "19850505", 49),
    [],
    household="HP2",
    name="重名",
    birth="1985-05-05",
    status="注销",
)
case(
    "dup_person_active",
    ident("330211", "19850505", 51),
    [],
    household="HP2",
    name="重名",
    birth="1985-05-05",
)
# 假 fake
case(
    "born_on_cutoff_day",
    ident("330211", "20161001", 53),
    [("BIRTH_DATE_IMPOSSIBLE", E)],
    birth="2016-10-01",
)
case(
    "born_2020", ident("330211", "20200101", 55), [("BIRTH_DATE_IMPOSSIBLE", E)], birth="2020-01-01"
)
case(
    "born_1899", ident("330211", "18990101", 57), [("BIRTH_DATE_IMPOSSIBLE", E)], birth="1899-01-01"
)
case(
    "unknown_county",
    ident("330299", "19900101", 59),
    [("UNKNOWN_ADDRESS_CODE", W)],
    birth="1990-01-01",
)
case(
    "unknown_province",
    ident("999999", "19900101", 61),
    [("UNKNOWN_ADDRESS_CODE", W)],
    birth="1990-01-01",
)
case(
    "retired_before_birth",
    ident("330227", "20100101", 63),
    [("UNKNOWN_ADDRESS_CODE", W)],
    birth="2010-01-01",
)
# 漏 missing
case("missing_name", ident("330211", "19800101", 65), [("MISSING_FIELD", E)], name="")
case("missing_id", "", [("MISSING_FIELD", E)])
case(
    "missing_category",
    ident("330211", "19800101", 67),
    [("MISSING_FIELD", E)],
    htype="5",
    category="",
)
case("missing_birth", ident("330211", "19800101", 69), [("MISSING_FIELD", E)], birth="")
case(
    "headless_spouse",
    ident("330211", "19800101", 71),
    [("HOUSEHOLD_WITHOUT_HEAD", E)],
    household="HH",
    relation="配偶",
)
case(
    "headless_child",
    ident("330211", "20000101", 73),
    [],
    household="HH",
    relation="子",
    birth="2000-01-01",
)
case(
    "head_cancelled",
    ident("330211", "19400101", 75),
    [],
    household="HX",
    status="注销",
    birth="1940-01-01",
)
case(
    "head_cancelled_child",
    ident("330211", "19700101", 77),
    [("HOUSEHOLD_WITHOUT_HEAD", E)],
    household="HX",
    relation="子",
    birth="1970-01-01",
)
case("no_division", ident("330211", "19800101", 79), [("NO_DIVISION_CODE", E)], division="")

KEYS = [key for key, _, _ in CASES]
assert len(set(KEYS)) == len(KEYS)


def _load(engine: Engine, tmp_path: Path) -> dict[int, str]:
    """Import the cases; record id -> case key (by the CSV line each record came from)."""
    path = write_register(tmp_path / "register.csv", [row for _, row, _ in CASES])
    result = import_register(engine, path)
    assert (result.loaded, result.rejected) == (len(CASES), 0)
    R = schema.register
    with engine.connect() as conn:
        return {
            int(r.record_id): KEYS[int(r.source_line) - 2]
            for r in conn.execute(select(R.c.record_id, R.c.source_line))
        }


def test_each_case_gives_exactly_its_findings(engine: Engine, tmp_path: Path) -> None:
    key_of = _load(engine, tmp_path)
    report = run_checks(engine, ZHENHAI, cutoff=CUTOFF)

    got = sorted((key_of[f.record_id or 0], f.code, f.severity) for f in report.findings)
    expected = sorted((key, code, sev) for key, _, found in CASES for code, sev in found)
    assert got == expected
    # the table is the single source of category and severity
    for f in report.findings:
        spec = CHECKS[f.code]
        assert (f.category, f.severity) == (spec.category, spec.severity)
    # deterministic order: by code, then record
    assert [(f.code, f.record_id) for f in report.findings] == sorted(
        (f.code, f.record_id) for f in report.findings
    )
    assert report.counts == {
        code: sum(1 for f in report.findings if f.code == code) for code in CHECKS
    }
    assert list(report.counts) == list(CHECKS)
    assert report.total == len(expected)
    in_scope = sum(1 for _, row, _ in CASES if row["行政区划代码"].startswith("330211"))
    assert report.scanned == in_scope


def test_findings_say_what_is_done_and_name_no_id_number(engine: Engine, tmp_path: Path) -> None:
    key_of = _load(engine, tmp_path)
    report = run_checks(engine, ZHENHAI, cutoff=CUTOFF)
    by_key = {(key_of[f.record_id or 0], f.code): f for f in report.findings}

    assert by_key["wrong_check", "WRONG_CHECK_DIGIT"].action == CONVERTED_AS_USUAL
    assert by_key["inactive_wrong_check", "WRONG_CHECK_DIGIT"].action == INACTIVE_NOT_CONVERTED
    assert by_key["dup_id_c_inactive", "DUPLICATE_ID_NUMBER"].action == INACTIVE_NOT_CONVERTED
    assert by_key["no_division", "NO_DIVISION_CODE"].action == NEVER_CONVERTED
    assert "户别" in by_key["missing_category", "MISSING_FIELD"].explanation
    assert "姓名" in by_key["missing_name", "MISSING_FIELD"].explanation

    old = by_key["old15", "OLD_15_DIGIT_ID"]
    assert old.upgraded_id == _check18("33021119800101097")
    assert f"校验码 {old.upgraded_id[-1]}" in old.explanation
    assert {f.upgraded_id for f in report.findings} - {None} == {
        old.upgraded_id,
        _check18("33021119800101098"),
        _check18("33021119800101057"),
    }
    # the household finding stands on the first active member
    assert ("headless_child", "HOUSEHOLD_WITHOUT_HEAD") not in by_key

    numbers = {row["公民身份号码"].upper() for _, row, _ in CASES} - {""}
    numbers |= {f.upgraded_id for f in report.findings if f.upgraded_id}
    for f in report.findings:
        assert f.explanation and f.action
        assert not any(n in f.explanation for n in numbers), f.code
        assert not re.search(r"\d{14}", f.explanation), f.code
        assert f.name is None or f.name not in f.explanation


def test_birth_date_is_judged_against_the_cutoff(engine: Engine, tmp_path: Path) -> None:
    _load(engine, tmp_path)
    later = datetime(2020, 6, 1, tzinfo=CST)
    report = run_checks(engine, ZHENHAI, cutoff=later)
    # born 2016-10-01 and 2020-01-01: possible before a 2020-06-01 cutoff; 1899 never is
    assert report.counts["BIRTH_DATE_IMPOSSIBLE"] == 1


def test_an_empty_scope_has_no_findings_but_the_unplaceable(engine: Engine, tmp_path: Path) -> None:
    key_of = _load(engine, tmp_path)
    report = run_checks(engine, BUILTIN_PROFILES["ankang"], cutoff=CUTOFF)
    assert report.scanned == 0
    assert [(key_of[f.record_id or 0], f.code) for f in report.findings] == [
        ("no_division", "NO_DIVISION_CODE")
    ]


def _fields(number: str | None, **kw: Any) -> RecordFields:
    values: dict[str, Any] = {
        "record_id": 1,
        "id_number": number,
        "name": "测试",
        "sex": "男",
        "birth_date": date(1980, 1, 1),
        "division_code": "330211001001",
    }
    values.update(kw)
    return RecordFields(**values)


def test_record_checks_without_a_database() -> None:
    addresses = AddressCodes()
    good = ident("330211", "19800101", 1)
    assert record_issues(_fields(good), CUTOFF, addresses) == []
    assert (
        record_issues(
            _fields(f" {X_ID.lower()} ", birth_date=date(1991, 11, 11)), CUTOFF, addresses
        )
        == []
    )
    assert record_issues(_fields(None), CUTOFF, addresses) == []
    codes = [c for c, _, _ in record_issues(_fields(good[:17] + "Y"), CUTOFF, addresses)]
    assert codes == ["MALFORMED_ID_NUMBER"]
    # 15-digit: the birth date is 19YYMMDD and compared like an 18-digit one
    codes = [
        c
        for c, _, _ in record_issues(
            _fields("330211800101017", birth_date=date(1980, 1, 2)), CUTOFF, addresses
        )
    ]
    assert codes == ["OLD_15_DIGIT_ID", "BIRTH_DATE_MISMATCH"]
    # both dates impossible: one finding naming both
    issues = record_issues(
        _fields(ident("330211", "20200101", 1), birth_date=date(2021, 1, 1)), CUTOFF, addresses
    )
    assert [c for c, _, _ in issues] == ["BIRTH_DATE_MISMATCH", "BIRTH_DATE_IMPOSSIBLE"]
    assert "出生日期栏、号码中的出生日期" in issues[-1][1]


def test_address_table_is_asked_once_per_code_and_year(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, str]] = []
    real = ric.get_birth_place

    def counting(number: str) -> dict[str, str]:
        calls.append((number[:6], number[6:10]))
        return real(number)

    monkeypatch.setattr(ric, "get_birth_place", counting)
    addresses = AddressCodes()
    for seq in range(1, 400, 2):
        for address, birth in (("330211", "19500101"), ("330299", "19900101")):
            number = ident(address, birth, seq)
            record_issues(
                _fields(
                    number, birth_date=date.fromisoformat(f"{birth[:4]}-{birth[4:6]}-{birth[6:]}")
                ),
                CUTOFF,
                addresses,
            )
    assert len(calls) == len(set(calls))
    assert len(calls) <= (2016 - 1950 + 1) + (2016 - 1990 + 1)


def test_check_command_prints_counts_and_masked_list(sqlite_url: str, tmp_path: Path) -> None:
    path = write_register(tmp_path / "register.csv", [row for _, row, _ in CASES])
    runner = CliRunner()
    result = runner.invoke(cli, ["import", str(path), "--db", sqlite_url, "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["check", "--profile", "zhenhai", "--db", sqlite_url, "-q"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    line = next(x for x in out.splitlines() if "WRONG_CHECK_DIGIT" in x)
    assert line.split()[:3] == ["WRONG_CHECK_DIGIT", "错", "error"]
    assert line.split()[-1] == "2"
    assert re.search(r"OLD_15_DIGIT_ID\s+错\s+warning\s.*\s3$", out, re.M)
    total = sum(len(found) for _, _, found in CASES)
    assert re.search(rf"^(合计 )?total\s.*\b{total}$", out, re.M), out
    numbers = {row["公民身份号码"].upper() for _, row, _ in CASES} - {""}
    assert not any(n in out for n in numbers)

    result = runner.invoke(cli, ["check", "-p", "zhenhai", "--list", "--db", sqlite_url, "-q"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    wrong = _wrong_check(ident("330211", "19800101", 29))
    assert mask_id(wrong) in out
    assert not any(n in out for n in numbers)
    assert not re.search(r"\d{15}", out)
    assert "wrong_check" not in out and "w**********" in out  # names masked

    # a profile without a date in its text needs --cutoff, as the cutover does
    result = runner.invoke(cli, ["check", "-p", "panjin", "--db", sqlite_url, "-q"])
    assert result.exit_code == 4
    result = runner.invoke(
        cli, ["check", "-p", "panjin", "--cutoff", "2016-12-31 24:00", "--db", sqlite_url, "-q"]
    )
    assert result.exit_code == 0 and re.search(r"^(合计 )?total\s.*\b1$", result.stdout, re.M)
