"""Synthetic registers over the real division codes, for rehearsal teams, tests and benchmarks.

Never real people: names are drawn from syllable lists, ID numbers are made up with valid check
characters (address code of the person's county, birth date, sequence by sex). Deterministic per seed.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from .divisions import Division, by_code, villages_in
from .idnumbers import check_character
from .progress import Progress, no_progress

PERSON_HEADER = [
    "公民身份号码",
    "姓名",
    "性别",
    "出生日期",
    "户号",
    "户口性质",
    "户别",
    "行政区划代码",
    "人员状态",
    "变更时间",
    "住址",
    "派出所",
    "与户主关系",
]
APPLICATION_HEADER = ["业务编号", "公民身份号码", "业务类型", "申请时间", "审批状态", "审批时间"]

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余于杜叶程魏苏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建文辉力林鹏宇浩然欣怡子涵梓轩雨泽晨博瑞嘉琪思远俊峰海燕春梅志国晓东佳慧"

# (raw 户口性质 value, weight): ~85 % legacy types, as FLOORS.md's registers.
TYPE_MIX: list[tuple[str, float]] = [
    ("1", 0.17),
    ("2", 0.42),
    ("3", 0.03),
    ("4", 0.02),
    ("5", 0.02),
    ("6", 0.005),
    ("8", 0.005),
    ("农业", 0.06),
    ("非农业", 0.04),
    ("城镇户口", 0.01),
    ("蓝印户口", 0.01),
    ("自理户口", 0.005),
    ("地方城镇居民户口", 0.005),
    ("居民户口", 0.12),
    ("0", 0.01),
    ("7", 0.01),
]
_COLLECTIVE_CODES = {"3", "4"}
_RELATIONS = ["配偶", "子", "女", "父亲", "母亲", "孙子"]


@dataclass
class SampleOptions:
    scope: tuple[str, ...]
    persons: int
    seed: int = 2016
    inactive_share: float = 0.02
    collective_share: float = 0.04


def person_id(address: str, birth: str, seq: int) -> str:
    """A made-up ID number with a valid check character (``birth`` as YYYYMMDD; odd ``seq`` for a
    man, even for a woman)."""
    first17 = f"{address}{birth}{seq:03d}"
    return first17 + check_character(first17)


def person_row(
    number: str,
    htype: str,
    *,
    name: str = "测试",
    sex: str = "男",
    birth: str = "1980-01-01",
    household: str = "H1",
    category: str = "家庭户",
    division: str = "330211001001",
    status: str = "正常",
    relation: str = "本人",
    updated: str = "2016-06-01 09:00:00",
    address: str = "",
    police_station: str = "",
) -> dict[str, str]:
    """One record as a legacy export holds it (the headers of PERSON_HEADER)."""
    return {
        "公民身份号码": number,
        "姓名": name,
        "性别": sex,
        "出生日期": birth,
        "户号": household,
        "户口性质": htype,
        "户别": category,
        "行政区划代码": division,
        "人员状态": status,
        "变更时间": updated,
        "住址": address,
        "派出所": police_station,
        "与户主关系": relation,
    }


# Unique ID numbers by construction, with no set of those made (memory stays flat): the n-th person
# of each block of _BIRTH_DAYS persons gets a day of its own, and each block its own pair of
# sequence codes (odd for a man, even for a woman, as GB 11643 has it; never 000).
_BIRTH_DAYS = 365 * 85  # born 1930-1-1 to 2014
_DAY_STRIDE = 7919  # prime, and 31,025 = 5^2 x 17 x 73: n -> n x stride mod 31,025 is one-to-one
MAX_SAMPLE_PERSONS = 499 * _BIRTH_DAYS  # sequence codes up to 999


def _birth_and_sequence(index: int, male: bool) -> tuple[date, int]:
    block, slot = divmod(index, _BIRTH_DAYS)
    day = (slot * _DAY_STRIDE + block) % _BIRTH_DAYS
    return date(1930, 1, 1) + timedelta(days=day), block * 2 + (1 if male else 2)


def synthetic_name(rng: random.Random) -> str:
    return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2, 2))))


def generate_persons(options: SampleOptions) -> Iterator[dict[str, Any]]:
    """Households of 1-5 persons spread over the scope's villages, in a realistic type mix."""
    rng = random.Random(options.seed)
    villages = villages_in(options.scope)
    if not villages:
        raise ValueError(f"no division in the shipped table under {options.scope}")
    towns = by_code()
    codes, weights = zip(*TYPE_MIX, strict=True)
    if options.persons > MAX_SAMPLE_PERSONS:
        raise ValueError(f"a sample register holds at most {MAX_SAMPLE_PERSONS:,} persons")
    made = 0
    household_no = 0
    while made < options.persons:
        household_no += 1
        village = rng.choice(villages)
        town = towns.get(village.parent_code)
        collective = rng.random() < options.collective_share
        size = 1 if collective else rng.choice((1, 2, 2, 3, 3, 3, 4, 4, 5))
        htype = rng.choices(codes, weights)[0]
        if collective and htype not in _COLLECTIVE_CODES:
            htype = rng.choice(("3", "4"))
        if not collective and htype in _COLLECTIVE_CODES:
            htype = "1" if htype == "3" else "2"
        category = "集体户" if collective else "家庭户"
        household_id = f"{village.code[:9]}{household_no:07d}"
        for member in range(min(size, options.persons - made)):
            male = rng.random() < 0.5
            birth, seq = _birth_and_sequence(made, male)
            made += 1
            first17 = f"{village.code[:6]}{birth:%Y%m%d}{seq:03d}"
            number = first17 + check_character(first17)
            inactive = rng.random() < options.inactive_share
            yield {
                "公民身份号码": number,
                "姓名": synthetic_name(rng),
                "性别": "男" if male else "女",
                "出生日期": birth.isoformat(),
                "户号": household_id,
                "户口性质": htype,
                "户别": category,
                "行政区划代码": village.code,
                "人员状态": "注销" if inactive else "正常",
                "变更时间": f"2016-{rng.randint(1, 8):02d}-{rng.randint(1, 28):02d} 10:00:00",
                "住址": _address(village, town, rng),
                "派出所": (town.name if town else village.name) + "派出所",
                "与户主关系": "本人"
                if member == 0
                else ("集体户成员" if collective else rng.choice(_RELATIONS)),
            }


def _address(village: Division, town: Division | None, rng: random.Random) -> str:
    return f"{town.name if town else ''}{village.name.removesuffix('居委会').removesuffix('村委会')}{rng.randint(1, 200)}号"


def write_csv(
    path: Path, rows: Iterator[dict[str, Any]], header: list[str], encoding: str = "utf-8"
) -> int:
    count = 0
    with path.open("w", encoding=encoding, newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def write_sample(
    path: Path,
    options: SampleOptions,
    encoding: str = "utf-8",
    progress: Progress = no_progress,
) -> int:
    """A synthetic register as CSV (UTF-8 or GBK) or .xlsx, streaming."""
    rows = generate_persons(options)
    with progress("生成 sample", options.persons, "人") as advance:

        def counted() -> Iterator[dict[str, Any]]:
            for row in rows:
                advance(1)
                yield row

        if path.suffix.lower() == ".xlsx":
            return _write_xlsx(path, counted())
        return write_csv(path, counted(), PERSON_HEADER, encoding)


def _write_xlsx(path: Path, rows: Iterator[dict[str, Any]]) -> int:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("人员")
    ws.append(PERSON_HEADER)
    count = 0
    for row in rows:
        ws.append([row[h] for h in PERSON_HEADER])
        count += 1
    wb.save(path)
    return count
