"""Booklet replacement list (``hukou-convert booklets``): per police station, the households whose
户口簿 still prints a type the reform abolished.

Households need not replace such a booklet, but get a new one on request (the Wenzhou text); the
counters need to know which households those are. A household is listed when at least one of its
members was converted by the run (a live history row); the types its booklet shows are the original
codes of those members, with their legacy labels.

One sheet (换发清单, continued past a sheet's rows) with the police station as its first column and
an autofilter, sorted by station and household, rather than a sheet per station: station names are
free text that does not survive as sheet names (31 characters, no ``[]:*?/\\``, no duplicates once
cut), and a city has hundreds of stations. Each counter filters on its station; 概要 counts the
households per station. Heads' names and ID numbers are masked unless asked otherwise.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from sqlalchemy import Engine, and_, case, func, null, select

from . import schema
from .census import is_active
from .checks import HEAD_RELATIONS
from .codes import CodeTable
from .db import display_url, translate_errors
from .errors import RegisterStateError
from .idnumbers import maskers
from .instants import now
from .progress import Progress, no_progress
from .runs import completed_run, run_codes, run_profile, run_register
from .tallies import Places
from .workbook import summary_table
from .xlsx import Column, PageSetup, SavedWorkbook, TableWriter, write_workbook

H = schema.history
YIELD_PER = 10_000
UNKNOWN_STATION = "（派出所不明）"


@dataclass(frozen=True)
class BookletHousehold:
    station: str
    household_id: str | None
    head_name: str | None  # None: no active 本人/户主 in the household
    head_id_number: str | None
    address: str | None
    division_code: str | None
    types_shown: tuple[str, ...]  # legacy labels of the members' original codes
    members: int  # active members in the register
    converted: int  # members converted by the run


@dataclass
class BookletResult:
    run_id: str
    path: Path
    sha256_path: Path
    households: int
    by_station: Counter[str] = field(default_factory=Counter)
    unmasked: bool = False


def booklet_households(engine: Engine, run_id: str) -> Iterator[BookletHousehold]:
    """The households of a completed run, streamed in (station, household) order. The station,
    address and division are the head's (本人/户主), else the first converted member's."""
    run = completed_run(engine, run_id)
    rid = str(run.run_id)
    codes = run_codes(engine, rid)
    active = run_profile(engine, run).active_statuses
    reg = run_register(engine, run)
    if not reg.has("household_id"):
        raise RegisterStateError(
            f"{reg.source}: the register has no 户号 column (columns.household_id): households"
            " cannot be listed"
        )
    R = reg.table
    live = and_(H.c.run_id == rid, H.c.reverted_at.is_(None))
    with translate_errors(), engine.connect() as conn:
        raws = [
            r
            for r in conn.execute(select(H.c.original_code).where(live).distinct()).scalars()
            if r is not None
        ]
        raws.sort()
        converted = (
            select(
                R.c.household_id,
                func.count().label("converted"),
                func.min(R.c.record_id).label("first_member"),
                *(
                    func.sum(case((H.c.original_code == raw, 1), else_=0)).label(f"c{i}")
                    for i, raw in enumerate(raws)
                ),
            )
            .select_from(H.join(R, R.c.record_id == reg.ours(H)))
            .where(live)
            .group_by(R.c.household_id)
            .subquery("converted")
        )
        heads = (
            select(R.c.household_id, func.min(R.c.record_id).label("head_id"))
            .where(_column(R, "relation").in_(HEAD_RELATIONS), is_active(R, active))
            .group_by(R.c.household_id)
            .subquery("heads")
        )
        members = (
            select(R.c.household_id, func.count().label("members"))
            .where(is_active(R, active))
            .group_by(R.c.household_id)
            .subquery("members")
        )
        head, first = R.alias("head"), R.alias("first_member")
        station = func.coalesce(
            _column(head, "police_station"), _column(first, "police_station"), ""
        )
        query = (
            select(
                station.label("station"),
                converted.c.household_id,
                _column(head, "name"),
                head.c.id_number,
                func.coalesce(_column(head, "address"), _column(first, "address")).label("address"),
                func.coalesce(head.c.division_code, first.c.division_code).label("division"),
                func.coalesce(members.c.members, 0).label("members"),
                converted.c.converted,
                *(converted.c[f"c{i}"] for i in range(len(raws))),
            )
            .select_from(
                converted.join(first, first.c.record_id == converted.c.first_member)
                .outerjoin(heads, heads.c.household_id == converted.c.household_id)
                .outerjoin(head, head.c.record_id == heads.c.head_id)
                .outerjoin(members, members.c.household_id == converted.c.household_id)
            )
            .order_by(station, converted.c.household_id)
        )
        rows = conn.execution_options(stream_results=True, yield_per=YIELD_PER).execute(query)
        for partition in rows.partitions():
            for r in partition:
                yield _household(r, raws, codes)


def _column(table: Any, name: str) -> Any:
    """A field of the register (or an alias of it); NULL where the register has no such column."""
    return table.c[name] if name in table.c else null().label(name)


def _household(r: Any, raws: list[str], codes: CodeTable) -> BookletHousehold:
    shown = tuple(dict.fromkeys(codes.label(raw) for i, raw in enumerate(raws) if r[8 + i]))
    return BookletHousehold(
        station=r.station or UNKNOWN_STATION,
        household_id=r.household_id,
        head_name=r.name,
        head_id_number=r.id_number,
        address=r.address,
        division_code=r.division,
        types_shown=shown,
        members=int(r.members),
        converted=int(r.converted),
    )


COLUMNS = [
    Column("派出所", 20),
    Column("户号", 19, "code"),
    Column("户主姓名", 10),
    Column("户主公民身份号码", 21, "code"),
    Column("住址", 36),
    Column("行政区划代码", 15, "code"),
    Column("行政区划名称", 24),
    Column("户口簿所示户口类别（已取消）", 26),
    Column("在册人数", 9, "int"),
    Column("本次转换人数", 11, "int"),
    Column("备注", 24),
]


def write_booklet_list(
    engine: Engine,
    run_id: str | None,
    out: Path | None = None,
    *,
    unmasked: bool = False,
    progress: Progress = no_progress,
) -> BookletResult:
    """Write the list as xlsx (default ``reports/hukou-booklets-<run>.xlsx``), 0600, ``.sha256``."""
    run = completed_run(engine, run_id)
    rid = str(run.run_id)
    if out is None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", rid)
        out = Path("reports") / f"hukou-booklets-{safe}{'-UNMASKED' if unmasked else ''}.xlsx"
    places = Places.of(engine)
    result = BookletResult(rid, out, out, 0, unmasked=unmasked)

    def build(wb: Workbook) -> None:
        page = PageSetup(f"户口簿换发清单 — 运行 {rid}".replace("&", "&&"), "7030A0")
        banner = (
            f"户口簿换发清单：户口簿仍印有已取消户口类别的户（运行编号 {rid}），群众申请时予以换发"
        )
        summary = summary_table(wb, page, banner, "000000", unmasked)
        table = TableWriter(wb, "换发清单", COLUMNS, page)
        ident, name = maskers(unmasked)
        with progress("换发清单 booklets", None, "户") as advance:
            for hh in booklet_households(engine, rid):
                result.by_station[hh.station] += 1
                notes = []
                if hh.head_name is None and hh.head_id_number is None:
                    notes.append("无在册户主（本人/户主）")
                if hh.household_id is None:
                    notes.append("户号缺失")
                table.append(
                    [
                        hh.station,
                        hh.household_id,
                        name(hh.head_name),
                        ident(hh.head_id_number),
                        hh.address,
                        hh.division_code,
                        places.label(hh.division_code),
                        "、".join(hh.types_shown),
                        hh.members,
                        hh.converted,
                        "；".join(notes),
                    ]
                )
                advance(1)
        table.finish()
        result.households = table.data_rows
        for label, value, note in [
            ("运行编号", rid, ""),
            ("截止时点", run.cutoff, "北京时间 +08:00"),
            ("数据库", display_url(engine.url), "不含密码"),
            ("生成时间", now(), "北京时间 +08:00"),
            ("个人信息", "未脱敏" if unmasked else "已脱敏", ""),
            ("户数合计", result.households, "本次转换了至少一名成员的户"),
            *((f"派出所：{s}", n, "户") for s, n in sorted(result.by_station.items())),
        ]:
            summary.append([label, value, note])
        summary.finish()

    with translate_errors():
        saved: SavedWorkbook
        _, saved = write_workbook(out, build)
    result.path, result.sha256_path = saved.path, saved.sha256_path
    return result
