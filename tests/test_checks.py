"""The register checks (错、重、假、漏) on SQLite, PostgreSQL and MariaDB, and the check command."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
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
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.idnumbers import mask_id, mask_name
from hukou_convert.ingest import import_register
from hukou_convert.instants import CST
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.workbook import write_run_workbook

from .helpers import ident, person, sheet_table, write_register

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


# ---------------------------------------------------------------- the audit workbook's 异常清单

KIND = {
    code: kind
    for kind, codes in (
        (
            "错",
            (
                "WRONG_CHECK_DIGIT",
                "BIRTH_DATE_MISMATCH",
                "SEX_MISMATCH",
                "MALFORMED_DIVISION_CODE",
                "MALFORMED_ID_NUMBER",
                "OLD_15_DIGIT_ID",
                "CATEGORY_CONFLICT",
            ),
        ),
        (
            "重",
            ("DUPLICATE_ID_NUMBER", "DUPLICATE_ID_WITH_INACTIVE", "DUPLICATE_PERSON_IN_HOUSEHOLD"),
        ),
        ("假", ("BIRTH_DATE_IMPOSSIBLE", "UNKNOWN_ADDRESS_CODE")),
        ("漏", ("MISSING_FIELD", "HOUSEHOLD_WITHOUT_HEAD", "NO_DIVISION_CODE")),
    )
    for code in codes
}
SEVERITY = {E: "错误", W: "警告"}
ROW = {key: row for key, row, _ in CASES}


def _upgraded(number: str) -> str:
    """The 18-digit form of a 15-digit number, by python-stdnum's check computation."""
    return _check18(number[:6] + "19" + number[6:])


def _explanations(rid: dict[str, int]) -> dict[tuple[str, str], str]:
    """(case, code) -> the explanation its row must give, from the case itself."""

    def check(key: str) -> str:
        number = ROW[key]["公民身份号码"]
        return (
            f"校验码应为 {_check18(number[:17])[-1]}，登记为 {number[-1]}"
            "（GB 11643，ISO 7064 MOD 11-2）"
        )

    def see(key: str, *group: str) -> str:
        return "另见记录 " + "、".join(f"#{r}" for r in sorted(rid[k] for k in group if k != key))

    def same_id(key: str, active: int, *group: str) -> str:
        return f"同一公民身份号码在本辖区共 {len(group)} 条记录（在册 {active} 条），{see(key, *group)}"

    def old(key: str) -> str:
        check_char = _upgraded(ROW[key]["公民身份号码"])[-1]
        return f"旧15位号码，可升位为18位号码（第7位前插入19，校验码 {check_char}）"

    def address(code: str, year: int) -> str:
        return (
            f"地址码 {code} 在 python-stdnum 区划表中自出生年 {year} 至 2016 年均无记载；"
            "地址码会随区划调整撤销，仅作提示，待核实"
        )

    dup_ids = ("dup_id_a", "dup_id_b", "dup_id_c_inactive")
    trail = ("dup_trail_active", "dup_trail_cancelled")
    dup15 = ("dup15_old", "dup15_new")
    persons = ("dup_person_a", "dup_person_b")
    headless = "，登记了与户主关系但无人为本人/户主（本条为该户记录号最小者）"
    future = "出生日期栏晚于截止时刻或早于1900年"
    return {
        ("wrong_check", "WRONG_CHECK_DIGIT"): check("wrong_check"),
        ("inactive_wrong_check", "WRONG_CHECK_DIGIT"): check("inactive_wrong_check"),
        ("birth_mismatch", "BIRTH_DATE_MISMATCH"): "号码中的出生日期与出生日期栏不符（相差 1 天）",
        ("sex_mismatch", "SEX_MISMATCH"): "号码顺序码末位为奇数（男），性别栏为女",
        ("old15_sex", "SEX_MISMATCH"): "号码顺序码末位为偶数（女），性别栏为男",
        ("division_bad", "MALFORMED_DIVISION_CODE"): (
            "行政区划代码 '330211ABC001' 应为6、9或12位数字"
        ),
        ("id_too_short", "MALFORMED_ID_NUMBER"): (
            "号码共 14 位：应为18位（17位数字加校验码 0-9 或 X）或旧15位数字"
        ),
        ("id_date_invalid", "MALFORMED_ID_NUMBER"): "号码中的出生日期（第7-14位）不存在",
        ("old15", "OLD_15_DIGIT_ID"): old("old15"),
        ("old15_sex", "OLD_15_DIGIT_ID"): old("old15_sex"),
        ("dup15_old", "OLD_15_DIGIT_ID"): old("dup15_old"),
        ("category_conflict", "CATEGORY_CONFLICT"): "户口类别 2 含户别 家庭户，户别栏为 社区集体户",
        **{(k, "DUPLICATE_ID_NUMBER"): same_id(k, 2, *dup15) for k in dup15},
        **{(k, "DUPLICATE_ID_NUMBER"): same_id(k, 2, *dup_ids) for k in dup_ids},
        **{(k, "DUPLICATE_ID_WITH_INACTIVE"): same_id(k, 1, *trail) for k in trail},
        **{
            (k, "DUPLICATE_PERSON_IN_HOUSEHOLD"): (
                f"户号 HP 内姓名、出生日期、性别相同的在册记录共 2 条，{see(k, *persons)}"
            )
            for k in persons
        },
        ("born_on_cutoff_day", "BIRTH_DATE_IMPOSSIBLE"): future,
        ("born_2020", "BIRTH_DATE_IMPOSSIBLE"): future,
        ("born_1899", "BIRTH_DATE_IMPOSSIBLE"): future,
        ("unknown_county", "UNKNOWN_ADDRESS_CODE"): address("330299", 1990),
        ("unknown_province", "UNKNOWN_ADDRESS_CODE"): address("999999", 1990),
        ("retired_before_birth", "UNKNOWN_ADDRESS_CODE"): address("330227", 2010),
        ("missing_name", "MISSING_FIELD"): "必填项为空：姓名",
        ("missing_id", "MISSING_FIELD"): "必填项为空：公民身份号码",
        ("missing_category", "MISSING_FIELD"): "必填项为空：户别",
        ("missing_birth", "MISSING_FIELD"): "必填项为空：出生日期",
        ("headless_spouse", "HOUSEHOLD_WITHOUT_HEAD"): f"户号 HH 共 2 名在册人员{headless}",
        ("head_cancelled_child", "HOUSEHOLD_WITHOUT_HEAD"): f"户号 HX 共 1 名在册人员{headless}",
        ("no_division", "NO_DIVISION_CODE"): (
            "行政区划代码为空：不在任何辖区范围内，转换不会处理此记录"
        ),
    }


def _action(key: str, code: str) -> str:
    """What the row must say is done with the record: stated per category, and per state."""
    if code == "NO_DIVISION_CODE":
        return NEVER_CONVERTED
    if ROW[key]["人员状态"] != "正常":
        return INACTIVE_NOT_CONVERTED
    if code == "MISSING_FIELD":
        return "照常转换，列入异常清单待补录"
    if code == "CATEGORY_CONFLICT":
        return "照常转换，户别按户口类别登记（原户别记入历史表），列入异常清单待核实"
    return CONVERTED_AS_USUAL


def test_each_case_has_its_row_in_the_workbook(engine: Engine, tmp_path: Path) -> None:
    """The rehearsal's 异常清单 lists each case's findings: category code, 错重假漏, severity, the
    record (key, masked number, 18-digit form, masked name), the explanation and the action; the
    real run held to the rehearsal's plan does what the action says, and its 异常清单 is the
    rehearsal's."""
    key_of = _load(engine, tmp_path)
    rid = {key: record_id for record_id, key in key_of.items()}
    cutoff = resolve_cutoff(ZHENHAI, None)
    rehearsal = rehearse(engine, ZHENHAI, cutoff, plan_dir=tmp_path / "plan")
    rows = sheet_table(write_run_workbook(engine, rehearsal, tmp_path / "r").path, "异常清单")

    explanations = _explanations(rid)
    expected_pairs = {(key, code) for key, _, found in CASES for code, _ in found}
    assert set(explanations) == expected_pairs  # every case with a finding is spelled out
    got = {(key_of[r["记录号"]], r["类别代码"]): r for r in rows}
    assert len(got) == len(rows) == len(expected_pairs)
    assert [r["序号"] for r in rows] == list(range(1, len(rows) + 1))
    for key, row, found in CASES:
        number = row["公民身份号码"]
        for code, severity in found:
            cells = got[key, code]
            assert cells == {
                "序号": cells["序号"],
                "类别代码": code,
                "类别": KIND[code],
                "严重程度": SEVERITY[severity],
                "记录号": rid[key],
                "公民身份号码": mask_id(number) or None,
                "18位号码（由15位升级）": (
                    mask_id(_upgraded(number)) if code == "OLD_15_DIGIT_ID" else None
                ),
                "姓名": mask_name(row["姓名"]) or None,
                "说明": explanations[key, code],
                "处理": _action(key, code),
            }, (key, code)
    shown = " ".join(str(v) for r in rows for v in r.values())
    assert not any(row["公民身份号码"] in shown for _, row, _ in CASES if row["公民身份号码"])

    result = run_cutover(engine, ZHENHAI, cutoff, expect=rehearsal.plan_path)
    assert result.plan_comparison is not None and result.plan_comparison.matches
    H = schema.history
    with engine.connect() as conn:
        history = {
            key_of[r.record_id]: r
            for r in conn.execute(
                select(H.c.record_id, H.c.household_category, H.c.original_category_label)
            )
        }
    # what the action says is what the run did
    for (key, code), cells in got.items():
        assert (key in history) == cells["处理"].startswith("照常转换"), (key, code)
    conflict = history["category_conflict"]
    assert (conflict.household_category, conflict.original_category_label) == (
        "FAMILY",
        "社区集体户",
    )
    # the real run reports every exception the rehearsal did, row for row
    written = write_run_workbook(engine, result, tmp_path / "c")
    assert sheet_table(written.path, "异常清单") == rows


@pytest.mark.parametrize(
    ("cutoff", "last_possible"),
    [
        (datetime(2016, 10, 1, 0, 0, tzinfo=CST), date(2016, 9, 30)),  # 2016-09-30 24:00
        (datetime(2016, 9, 30, 16, 0, tzinfo=UTC), date(2016, 9, 30)),  # the same
        (datetime(2016, 10, 1, 12, 0, tzinfo=CST), date(2016, 10, 1)),  # a birth that morning
    ],
)
def test_a_birth_is_impossible_from_the_first_day_starting_at_the_cutoff(
    cutoff: datetime, last_possible: date
) -> None:
    from datetime import timedelta

    addresses = AddressCodes()

    def codes(birth: date) -> list[str]:
        return [c for c, _, _ in record_issues(_fields(None, birth_date=birth), cutoff, addresses)]

    assert codes(last_possible) == []
    assert codes(last_possible + timedelta(days=1)) == ["BIRTH_DATE_IMPOSSIBLE"]
    assert codes(date(1900, 1, 1)) == [] and codes(date(1899, 12, 31)) == ["BIRTH_DATE_IMPOSSIBLE"]
