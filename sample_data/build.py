"""Rebuild the sample register for zhenhai: `python sample_data/build.py`.

Synthetic people only: generated names, made-up ID numbers with valid check characters, real 2016
division codes of 镇海区 (330211). The generated body comes from `hukou_convert.sample`; the cases
below it cover every kind the import and the cutover must handle. Output: a GBK CSV (as legacy
exports are), the same register as .xlsx, and the in-flight applications file.
"""

from __future__ import annotations

import contextlib
import csv
import random
from datetime import date, datetime
from pathlib import Path
from typing import Any

from openpyxl import Workbook

from hukou_convert.sample import (
    APPLICATION_HEADER,
    PERSON_HEADER,
    SampleOptions,
    generate_persons,
    person_id,
    person_row,
)

HERE = Path(__file__).resolve().parent
URBAN = "330211001001"  # 城东社区 (111 主城区)
RURAL = "330211101210"  # 田顾村委会 (220 村庄)
WENZHOU = "330302001001"  # out of scope for zhenhai


def ident(address: str, birth: str, seq: int) -> str:
    return person_id(address, birth, seq)


def case(
    number: str,
    name: str,
    sex: str,
    birth: str,
    household: str,
    htype: str,
    category: str,
    division: str,
    status: str = "正常",
    relation: str = "本人",
) -> dict[str, Any]:
    return person_row(
        number,
        htype,
        name=name,
        sex=sex,
        birth=birth,
        household=household,
        category=category,
        division=division,
        status=status,
        relation=relation,
        address="镇海区样例路1号",
        police_station="招宝山街道派出所",
    )


def special_cases() -> list[dict[str, Any]]:
    """One record per kind of case; the comments say what each exercises."""
    r: list[dict[str, Any]] = []
    # GA 324.1 codes 0-8 in one household each (odd sequence numbers are men, even are women)
    for i, (code, sex) in enumerate(
        [("0", "男"), ("1", "女"), ("2", "男"), ("5", "女"), ("6", "男"), ("7", "女"), ("8", "男")]
    ):
        seq = 2 * (10 + i) + (1 if sex == "男" else 2)
        r.append(
            case(
                ident("330211", "19800101", seq),
                f"样{code}甲",
                sex,
                "1980-01-01",
                f"S0000{code}",
                code,
                "家庭户",
                URBAN,
            )
        )
    # collective households: combined codes 3 / 4, and a bare label with 户别 集体户
    r.append(
        case(
            ident("330211", "19990909", 21),
            "集体乙",
            "男",
            "19990909",
            "S00030",
            "3",
            "",
            URBAN,
            relation="集体户成员",
        )
    )
    r.append(
        case(
            ident("330211", "20000101", 22),
            "集体丙",
            "女",
            "2000-01-01",
            "S00040",
            "4",
            "",
            RURAL,
            relation="集体户成员",
        )
    )
    r.append(
        case(
            ident("330211", "19980202", 23),
            "宿舍丁",
            "男",
            "1998-02-02",
            "S00041",
            "农业",
            "集体户",
            RURAL,
            relation="集体户成员",
        )
    )
    # bare labels and derived types
    for i, label in enumerate(
        [
            "农业",
            "非农业",
            "城镇户口",
            "农业户口",
            "非农业户口",
            "蓝印户口",
            "自理口粮户口",
            "自理户口",
            "地方城镇居民户口",
        ]
    ):
        r.append(
            case(
                ident("330211", "19700315", 31 + 2 * i),
                f"标签{i}",
                "男",
                "1970-03-15",
                f"S001{i:02d}",
                label,
                "家庭户",
                RURAL if i % 2 else URBAN,
            )
        )
    # 重: one number registered twice (标签8 carries 标签7's number), for the checks to find
    r[-1]["公民身份号码"] = r[-2]["公民身份号码"]
    # already resident
    for i, label in enumerate(["居民户口", "居民家庭户口", "居民集体户口"]):
        r.append(
            case(
                ident("330211", "19850505", 52 + 2 * i),
                f"居民{i}",
                "女",
                "1985-05-05",
                f"S002{i:02d}",
                label,
                "家庭户" if i < 2 else "集体户",
                URBAN,
            )
        )
    # inactive (注销, 死亡): untouched
    r.append(
        case(
            ident("330211", "19300101", 61),
            "注销戊",
            "男",
            "1930-01-01",
            "S00300",
            "2",
            "家庭户",
            RURAL,
            status="注销",
        )
    )
    r.append(
        case(
            ident("330211", "19310101", 62),
            "死亡己",
            "女",
            "1931-01-01",
            "S00301",
            "1",
            "家庭户",
            URBAN,
            status="死亡",
        )
    )
    # out of scope: a Wenzhou division code
    r.append(
        case(
            ident("330302", "19600606", 71),
            "温州庚",
            "男",
            "1960-06-06",
            "S00400",
            "2",
            "家庭户",
            WENZHOU,
        )
    )
    # sex as 1/2, birth date as YYYYMMDD, lower-case x in the ID number
    x_id = next(
        ident("330211", "19911111", s)
        for s in range(81, 999, 2)
        if ident("330211", "19911111", s).endswith("X")
    )
    r.append(case(x_id.lower(), "数字辛", "1", "19911111", "S00500", "1", "家庭户", URBAN))
    # an old 15-digit number (the checks report its 18-digit form)
    r.append(case("330211750101123", "老号壬", "男", "1975-01-01", "S00501", "2", "家庭户", RURAL))
    # a wrong check character (错), loaded and converted: reported by the checks, never dropped
    good = ident("330211", "19880808", 91)
    bad = good[:17] + ("0" if good[17] != "0" else "1")
    r.append(case(bad, "错号癸", "男", "1988-08-08", "S00502", "2", "家庭户", RURAL))
    # rows the import must reject (kept in the reject file with line, column and reason)
    r.append(
        case(
            ident("330211", "19900101", 93),
            "坏日期",
            "男",
            "1990-13-45",
            "S00600",
            "2",
            "家庭户",
            RURAL,
        )
    )
    r.append(
        case(
            ident("330211", "19900102", 95),
            "坏性别",
            "未知",
            "1990-01-02",
            "S00601",
            "2",
            "家庭户",
            RURAL,
        )
    )
    r.append(
        case(
            ident("330211", "19900103", 97),
            "坏户别",
            "男",
            "1990-01-03",
            "S00602",
            "2",
            "宿舍",
            RURAL,
        )
    )
    return r


def applications(persons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """In-flight 农转非/非转农 business around the zhenhai cutoff (2016-09-30 24:00)."""
    rng = random.Random(7)
    active = [p for p in persons if p["人员状态"] == "正常" and p["户口性质"] in ("1", "2")]
    picks = rng.sample(active, 5)
    rows = [
        ("NZF-2016-0001", picks[0], "农转非", "2016-08-01 10:00", "已批准", "2016-09-20 15:00"),
        ("NZF-2016-0002", picks[1], "农转非", "2016-09-10 10:00", "待审批", ""),
        ("FZN-2016-0003", picks[2], "非转农", "2016-07-01 10:00", "已驳回", "2016-08-01 10:00"),
        ("NZF-2016-0004", picks[3], "农转非", "2016-10-02 09:00", "待审批", ""),
        ("FZN-2016-0005", picks[4], "非转农", "2016-09-01 10:00", "已批准", "2016-10-08 10:00"),
    ]
    out = [
        {
            "业务编号": a,
            "公民身份号码": p["公民身份号码"],
            "业务类型": k,
            "申请时间": t,
            "审批状态": s,
            "审批时间": at,
        }
        for a, p, k, t, s, at in rows
    ]
    out.append(
        {
            "业务编号": "NZF-2016-0006",
            "公民身份号码": ident("330211", "19770707", 99),
            "业务类型": "农转非",
            "申请时间": "2016-09-05 10:00",
            "审批状态": "待审批",
            "审批时间": "",
        }
    )
    return out


def main() -> None:
    body = list(generate_persons(SampleOptions(("330211",), 300, seed=20160930)))
    persons = body + special_cases()
    with (HERE / "zhenhai_register.csv").open("w", encoding="gbk", newline="") as fh:
        writer = csv.DictWriter(fh, PERSON_HEADER)
        writer.writeheader()
        writer.writerows(persons)
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("常住人口")
    ws.append(PERSON_HEADER)
    for p in persons:
        row: list[Any] = [p[h] for h in PERSON_HEADER]
        birth = p["出生日期"]
        # real date cells where the value is a date, as Excel exports hold them
        with contextlib.suppress(ValueError):
            row[3] = date.fromisoformat(birth)
        row[9] = datetime.fromisoformat(p["变更时间"])
        ws.append(row)
    wb.save(HERE / "zhenhai_register.xlsx")
    with (HERE / "zhenhai_applications.csv").open("w", encoding="gbk", newline="") as fh:
        writer = csv.DictWriter(fh, APPLICATION_HEADER)
        writer.writeheader()
        writer.writerows(applications(body))
    print(f"{len(persons)} persons, {len(applications(body))} applications written to {HERE}")


if __name__ == "__main__":
    main()
