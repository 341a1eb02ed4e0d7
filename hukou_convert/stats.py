"""Population statistics after the cutover (``hukou-convert stats``).

Two views, per county/district (or township) and in total:

- as of the cutoff, from the history table: persons a run converted, by original nature (the
  Wenzhou text's "以历史数据库作为改革初期身份识别和人口统计依据");
- after the reform, from the register: registered population in urban units (urban-rural code 1xx)
  and rural units (2xx), and 户籍人口城镇化率 = urban ÷ (urban + rural) (DOMAIN.md).

Both are grouped SQL by division code; the roll-up to areas runs in Python over the few thousand
division codes, with names from the division table in effect (:func:`divisions.division_lookup`).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from openpyxl import Workbook
from openpyxl.worksheet.worksheet import Worksheet
from sqlalchemy import Engine, func, select

from . import __version__, schema
from .codes import NATURE_LABELS, Nature
from .db import display_url, translate_errors
from .errors import UsageError
from .instants import now
from .progress import Progress, no_progress
from .runs import completed_run, run_codes, run_profile, run_register
from .tallies import (
    NATURE_ORDER,
    URBAN_RURAL_BASIS,
    AreaLevel,
    Places,
    add_bar_chart,
    registered_by_division,
    urban_rural_by_area,
    urbanisation_rate,
)
from .xlsx import (
    HEADER_FONT,
    Column,
    PageSetup,
    SavedWorkbook,
    TableWriter,
    is_risky,
    styled,
    write_text_atomically,
    write_workbook,
)

H = schema.history
LEVELS: dict[str, int] = {"county": 3, "township": 4}


@dataclass
class AreaStats:
    code: str  # the area's 12-digit code ("合计" for the total)
    name: str
    county_code: str
    county_name: str
    converted: Counter[Nature] = field(default_factory=Counter)
    urban: int = 0
    rural: int = 0
    unknown: int = 0

    @property
    def converted_total(self) -> int:
        return sum(self.converted.values())

    @property
    def registered(self) -> int:
        return self.urban + self.rural + self.unknown

    @property
    def rate(self) -> float | None:
        """户籍人口城镇化率 = urban ÷ (urban + rural)."""
        return urbanisation_rate(self.urban, self.rural)


@dataclass
class StatsResult:
    run_id: str
    profile: str
    jurisdiction: str
    cutoff: datetime
    by: AreaLevel
    areas: list[AreaStats]
    total: AreaStats
    database: str
    generated_at: datetime


def population_stats(
    engine: Engine,
    run_id: str | None = None,
    by: AreaLevel = "county",
    progress: Progress = no_progress,
) -> StatsResult:
    """Statistics of a completed run (default: the latest completed one)."""
    if by not in LEVELS:
        raise UsageError(f"--by: {by!r} is not county or township")
    run = completed_run(engine, run_id)
    rid = str(run.run_id)
    profile = run_profile(engine, run)
    with translate_errors(), progress("统计 stats", 3, "步") as advance:
        places = Places.of(engine)
        advance(1)
        converted: dict[str, Counter[Nature]] = {}
        with engine.connect() as conn:
            for code, nature, n in conn.execute(
                select(H.c.division_code, H.c.original_nature, func.count())
                .where(H.c.run_id == rid, H.c.reverted_at.is_(None))
                .group_by(H.c.division_code, H.c.original_nature)
            ):
                key = places.area(code, by)
                converted.setdefault(key, Counter())[Nature(nature)] += int(n)
        advance(1)
        registered = urban_rural_by_area(
            places,
            registered_by_division(
                engine, run_register(engine, run), profile, run_codes(engine, rid)
            ),
            by,
        )
        advance(1)
    areas: list[AreaStats] = []
    total = AreaStats("合计", "", "", "")
    for code in sorted(set(converted) | set(registered)):
        county = places.county(code)
        counts = registered.get(code, Counter())
        area = AreaStats(
            code,
            places.name(code, LEVELS[by]),
            county,
            places.name(county, 3),
            converted.get(code, Counter()),
            counts["urban"],
            counts["rural"],
            counts["unknown"],
        )
        areas.append(area)
        total.converted.update(area.converted)
        total.urban += area.urban
        total.rural += area.rural
        total.unknown += area.unknown
    return StatsResult(
        rid,
        profile.name,
        profile.display_name,
        run.cutoff,
        by,
        areas,
        total,
        display_url(engine.url),
        now(),
    )


# ---------------------------------------------------------------- output


def stats_columns(by: AreaLevel) -> list[Column]:
    area = [Column("区县代码", 14, "code"), Column("区县名称", 14)]
    if by == "township":
        area += [Column("乡镇（街道）代码", 16, "code"), Column("乡镇（街道）名称", 18)]
    return [
        *area,
        *(Column(f"转换：{NATURE_LABELS[n]}（人）", 11, "int") for n in NATURE_ORDER),
        Column("转换合计（人）", 12, "int"),
        Column("城镇人口（1xx）", 13, "int"),
        Column("乡村人口（2xx）", 13, "int"),
        Column("城乡属性不明", 12, "int"),
        Column("户籍人口合计", 13, "int"),
        Column("户籍人口城镇化率", 15, "percent"),
    ]


def stats_row(result: StatsResult, area: AreaStats) -> list[object]:
    if area is result.total:
        lead: list[object] = (
            ["合计", None, None, None] if result.by == "township" else ["合计", None]
        )
    elif result.by == "township":
        lead = [area.county_code, area.county_name, area.code, area.name]
    else:
        lead = [area.code, area.name]
    return [
        *lead,
        *(area.converted[n] for n in NATURE_ORDER),
        area.converted_total,
        area.urban,
        area.rural,
        area.unknown,
        area.registered,
        area.rate,
    ]


def write_stats(result: StatsResult, out: Path) -> Path:
    """``.xlsx`` (with charts, 0600, ``.sha256`` beside it) or ``.csv`` (UTF-8 with BOM, 0600) by the
    file's suffix. Only counts: nothing personal to mask."""
    suffix = out.suffix.lower()
    if suffix == ".csv":
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_text_atomically(out, "\ufeff" + stats_csv(result))
        return out
    if suffix != ".xlsx":
        raise UsageError(f"--out: {out.name} is neither .xlsx nor .csv")
    saved: SavedWorkbook
    _, saved = write_workbook(out, lambda wb: _fill_workbook(wb, result))
    return saved.path


def stats_csv(result: StatsResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([c.header for c in stats_columns(result.by)])
    for area in [*result.areas, result.total]:
        writer.writerow(
            [
                ""
                if v is None
                else f"{v:.6f}"
                if isinstance(v, float)
                else f"'{v}"  # text a spreadsheet would read as a formula
                if isinstance(v, str) and is_risky(v)
                else v
                for v in stats_row(result, area)
            ]
        )
    return buffer.getvalue()


def _fill_workbook(wb: Workbook, result: StatsResult) -> None:
    title = f"户籍人口统计 — {result.profile} — 运行 {result.run_id}"
    page = PageSetup(title.replace("&", "&&"), "4472C4")

    def banner(ws: Worksheet) -> list[list[object]]:
        return [[styled(ws, title, HEADER_FONT)], []]

    summary = TableWriter(wb, "概要", [Column("项目", 24), Column("内容", 50)], page, banner)
    for label, value in [
        ("运行编号", result.run_id),
        ("辖区", f"{result.jurisdiction}（{result.profile}）"),
        ("截止时点", result.cutoff),
        ("统计单位", "区县" if result.by == "county" else "乡镇（街道）"),
        ("转换人数", result.total.converted_total),
        ("户籍人口合计", result.total.registered),
        ("户籍人口城镇化率", result.total.rate),
        ("数据库", result.database),
        ("生成时间", result.generated_at),
        ("工具版本", __version__),
        ("口径：转换人数", "运行的历史表记录（未回退），按截止时点所在区划和原户口性质"),
        ("口径：城乡", URBAN_RURAL_BASIS + "统计时点：生成时间的登记库。"),
    ]:
        summary.append([label, f"{value:.2%}" if isinstance(value, float) else value])
    summary.finish()

    columns = stats_columns(result.by)
    table = TableWriter(wb, "人口统计", columns, page)
    for area in result.areas:
        table.append(stats_row(result, area))
    table.append_total(stats_row(result, result.total))
    table.finish()
    if result.areas and len(wb.sheetnames) == 2:  # one sheet: the charts' rows are on it
        name_col = 4 if result.by == "township" else 2
        first = name_col + 1  # the first nature column, 1-based
        last = 1 + len(result.areas)
        urban_col = first + len(NATURE_ORDER) + 1
        add_bar_chart(
            table.ws,
            "户籍人口：城镇与乡村",
            [urban_col, urban_col + 1, urban_col + 2],
            1,
            last,
            category_column=name_col,
            anchor=f"B{last + 4}",
        )
        add_bar_chart(
            table.ws,
            "转换人数：按原户口性质",
            [first + i for i, n in enumerate(NATURE_ORDER) if result.total.converted[n]],
            1,
            last,
            category_column=name_col,
            anchor=f"L{last + 4}",
        )
