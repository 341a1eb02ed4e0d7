"""A legacy-style register for the mapping tests: its own table, Chinese column names, numeric
combined codes (GA 324.1 table C.3) and this system's own resident codes 11 / 12."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    insert,
)

from .helpers import ident


def _legacy_table(metadata: MetaData, key_type: Any) -> Table:
    return Table(
        "常住人口",
        metadata,
        Column("人员编号", key_type, primary_key=True, autoincrement=False),
        *_person_columns(),
        mysql_charset="utf8mb4",
    )


def _person_columns() -> list[Column[Any]]:
    return [
        Column("公民身份号码", String(18)),
        Column("姓名", String(50)),
        Column("性别", String(1)),
        Column("出生日期", Date),
        Column("户号", String(20)),
        Column("户口类别", String(4)),  # combined code: nature and 户别 in one
        Column("行政区划代码", String(12)),
        Column("人员状态", String(2)),  # 1 = 正常, 2 = 注销
        Column("变更时间", DateTime),
        Column("备注", String(100)),  # a column the tool never touches
    ]


# The same register keyed by an integer 人员编号, or by a text one ("P00101": many systems key by
# text); one table name, so one of them per database.
LEGACY = _legacy_table(MetaData(), BigInteger)
LEGACY_TEXT = _legacy_table(MetaData(), String(20))


def legacy_table(text_key: bool) -> Table:
    return LEGACY_TEXT if text_key else LEGACY


def legacy_key(key: int, text_key: bool) -> int | str:
    """Record ``key`` of ROWS as the table keys it (zero-padded text keeps the same order)."""
    return f"P{key:05d}" if text_key else key


MAPPING = """
[register]
table = "常住人口"
key = "人员编号"

[columns]
id_number = "公民身份号码"
hukou_type = "户口类别"
division_code = "行政区划代码"
status = "人员状态"
updated_at = "变更时间"
name = "姓名"
birth_date = "出生日期"
sex = "性别"
household_id = "户号"

[values]
active = ["1"]
resident_family = "11"
resident_collective = "12"
"""

PROFILE = """
name = "zhenhai-legacy"
base = "zhenhai"
[codes."11"]
action = "resident"
category = "FAMILY"
label = "居民家庭户口"
[codes."12"]
action = "resident"
category = "COLLECTIVE"
label = "居民集体户口"
"""

# 自理口粮户口 takes its 户别 "from the household" (DOMAIN.md); a register without a 户别 column
# cannot tell it, so this jurisdiction's profile has to say it before the cutover can write 11 or 12.
PROFILE_WITH_5 = (
    PROFILE
    + """
[codes."5"]
action = "convert"
nature = "SELF_SUPPLIED_GRAIN"
category = "FAMILY"
label = "自理口粮户口"
"""
)

ROWS: list[tuple[int, str, str, str]] = [
    # key, code, status, division
    (101, "1", "1", "330211001001"),  # 非农业家庭户口 -> 11
    (102, "2", "1", "330211101210"),  # 农业家庭户口 -> 11
    (103, "3", "1", "330211001001"),  # 非农业集体户口 -> 12
    (104, "4", "1", "330211101210"),  # 农业集体户口 -> 12, never a family household
    (105, "11", "1", "330211001001"),  # already resident
    (106, "0", "1", "330211001001"),  # 未落常住户口: untouched
    (107, "2", "2", "330211101210"),  # 注销: untouched
    (108, "2", "1", "330302001001"),  # out of scope: untouched
    (109, "5", "1", "330211001001"),  # 自理口粮: the code carries no 户别 and there is no column
]


def create_legacy(
    engine: Engine, tmp_path: Path, rows: int = 0, text_key: bool = False
) -> tuple[Path, Path]:
    """The legacy table with ROWS (plus ``rows`` generated ones), a mapping and a profile file."""
    table = legacy_table(text_key)
    table.create(engine)
    records: list[dict[str, Any]] = []
    for key, code, status, division in ROWS:
        records.append(_record(key, code, status, division, text_key))
    for i in range(rows):
        code = ("1", "2", "2", "2", "3", "4", "11")[i % 7]
        records.append(_record(1000 + i, code, "1", "330211001001", text_key))
    with engine.begin() as conn:
        conn.execute(insert(table), records)
    mapping = tmp_path / "legacy-mapping.toml"
    mapping.write_text(MAPPING, encoding="utf-8")
    profile = tmp_path / "legacy-profile.toml"
    profile.write_text(PROFILE, encoding="utf-8")
    return mapping, profile


def _record(key: int, code: str, status: str, division: str, text_key: bool) -> dict[str, Any]:
    return {
        "人员编号": legacy_key(key, text_key),
        "公民身份号码": ident(division[:6], "19800101", (key % 400) * 2 + 1),
        "姓名": f"旧系{key}",
        "性别": "1",
        "出生日期": date(1980, 1, 1),
        "户号": f"H{key}",
        "户口类别": code,
        "行政区划代码": division,
        "人员状态": status,
        "变更时间": datetime(2016, 6, 1, 9, 0),
        "备注": f"备注{key}",
    }
