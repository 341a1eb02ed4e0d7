"""The statistical sheets of the audit workbook: 分类汇总 (converted persons by district, township
and original nature, with a chart) and 城乡统计 (registered population in urban and rural units, and
户籍人口城镇化率), with division names from the shipped NBS table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from openpyxl import Workbook
from openpyxl.chart import BarChart, Reference
from sqlalchemy import Engine, and_, or_, select
from sqlalchemy import func as sqlfunc

from . import schema
from .census import in_scope, is_active
from .codes import NATURE_LABELS, Action, Nature
from .cutover import CutoverResult
from .divisions import Division, by_code
from .xlsx import HEADER_FILL, HEADER_FONT, Column, PageSetup, TableWriter, styled

R = schema.register
UNKNOWN_DIVISION = "（未知区划）"
NATURE_ORDER = list(NATURE_LABELS)


@dataclass
class Places:
    """Names and urban-rural codes from the shipped NBS table; unknown codes are shown as such."""

    table: dict[str, Division] = field(default_factory=by_code)

    @staticmethod
    def _full(code: str | None) -> str:
        return (code or "").strip().ljust(12, "0")[:12]

    def county(self, code: str | None) -> str:
        return self._full(code)[:6] + "000000"

    def township(self, code: str | None) -> str:
        return self._full(code)[:9] + "000"

    def name(self, code: str, level: int) -> str:
        d = self.table.get(code)
        return d.name if d is not None and d.level == level else UNKNOWN_DIVISION

    def label(self, code: str | None) -> str:
        """Township and unit name of a village-level code (招宝山街道城东社区)."""
        d = self.table.get(code or "")
        if d is None:
            return UNKNOWN_DIVISION
        parent = self.table.get(d.parent_code)
        return f"{parent.name}{d.name}" if d.level == 5 and parent is not None else d.name

    def is_urban(self, code: str | None) -> bool | None:
        d = self.table.get(code or "")
        return d.is_urban if d is not None else None


BREAKDOWN_COLUMNS = [
    Column("区县代码", 14, "code"),
    Column("区县名称", 14),
    Column("乡镇（街道）代码", 16, "code"),
    Column("乡镇（街道）名称", 18),
    *(Column(f"{NATURE_LABELS[n]}（人）", 11, "int") for n in NATURE_ORDER),
    Column("合计（人）", 12, "int"),
]


def fill_breakdown(
    table: TableWriter, places: Places, by_division: dict[str, Counter[Nature]]
) -> int:
    """Converted persons by township and by district × original nature, with a chart; the total."""
    columns = BREAKDOWN_COLUMNS
    townships: dict[tuple[str, str], Counter[Nature]] = {}
    for code, counts in by_division.items():
        key = (places.county(code), places.township(code))
        townships.setdefault(key, Counter()).update(counts)
    counties: dict[str, Counter[Nature]] = {}
    for county, township in sorted(townships):
        counts = townships[(county, township)]
        counties.setdefault(county, Counter()).update(counts)
        table.append(
            [county, places.name(county, 3), township, places.name(township, 4)]
            + [counts[n] for n in NATURE_ORDER]
            + [sum(counts.values())]
        )
    grand: Counter[Nature] = Counter()
    for counts in counties.values():
        grand.update(counts)
    total = sum(grand.values())
    table.append_total(["合计", None, None, None, *(grand[n] for n in NATURE_ORDER), total])
    table.finish()

    # The same by district, below: the chart's data.
    ws = table.ws
    table.append_below([])
    table.append_below([styled(ws, "按区县汇总（转换人数）", HEADER_FONT)])
    header_row = table.append_below(
        [
            styled(ws, c.header if i != 2 and i != 3 else "", HEADER_FONT, HEADER_FILL)
            for i, c in enumerate(columns)
        ]
    )
    for county in sorted(counties):
        counts = counties[county]
        table.append_below(
            [_code_cell(ws, county), places.name(county, 3), None, None]
            + [counts[n] for n in NATURE_ORDER]
            + [sum(counts.values())]
        )
    last = header_row + len(counties)
    table.append_below(
        [styled(ws, "合计", HEADER_FONT), None, None, None]
        + [grand[n] for n in NATURE_ORDER]
        + [total]
    )
    if counties:
        chart = BarChart()
        chart.type = "col"
        chart.grouping = "stacked"
        chart.overlap = 100
        chart.title = "转换人数：按区县和原户口性质"
        chart.y_axis.title = "人"
        chart.width, chart.height = 22, 11
        for i, nature in enumerate(NATURE_ORDER):
            if grand[nature]:
                col = 5 + i
                data = Reference(ws, min_col=col, min_row=header_row, max_row=last)
                chart.add_data(data, titles_from_data=True)
        chart.set_categories(Reference(ws, min_col=2, min_row=header_row + 1, max_row=last))
        ws.add_chart(chart, "N2")
    return total


def _code_cell(ws: Any, code: str) -> Any:
    cell = styled(ws, code)
    cell.number_format = "@"
    return cell


# ---------------------------------------------------------------- 城乡统计


def write_urban_rural(
    engine: Engine, wb: Workbook, page: PageSetup, places: Places, result: CutoverResult
) -> None:
    p = result.profile
    codes = result.census.codes
    not_permanent = [e.raw for e in codes.entries() if e.action is Action.NOT_PERMANENT]
    registered = and_(
        in_scope(R, p.scope),
        is_active(R, p.active_statuses),
        or_(R.c.hukou_type.is_(None), R.c.hukou_type.notin_(not_permanent)),
    )
    per_county: dict[str, Counter[str]] = {}
    with engine.connect() as conn:
        for division, n in conn.execute(
            select(R.c.division_code, sqlfunc.count()).where(registered).group_by(R.c.division_code)
        ):
            urban = places.is_urban(division)
            key = "unknown" if urban is None else "urban" if urban else "rural"
            per_county.setdefault(places.county(division), Counter())[key] += int(n)
    columns = [
        Column("区县代码", 14, "code"),
        Column("区县名称", 14),
        Column("城镇人口（1xx）", 14, "int"),
        Column("乡村人口（2xx）", 14, "int"),
        Column("城乡属性不明", 13, "int"),
        Column("户籍人口合计", 13, "int"),
        Column("户籍人口城镇化率", 16, "percent"),
    ]
    table = TableWriter(wb, "城乡统计", columns, page)
    total: Counter[str] = Counter()
    for county in sorted(per_county):
        counts = per_county[county]
        total.update(counts)
        table.append([county, places.name(county, 3), *_urban_row(counts)])
    table.append_total(["合计", None, *_urban_row(total)])
    table.finish()
    table.append_below([])
    table.append_below(
        [
            "口径：范围内、状态有效、常住户口登记的人口（不含未落常住户口、暂住户口），按人员登记所在"
            "村级单位的城乡分类代码统计（1xx 城镇，2xx 乡村；代码不在区划表中的计入“城乡属性不明”）。"
            "户籍人口城镇化率 = 城镇人口 ÷（城镇人口 + 乡村人口）。统计时点：写出本工作簿时的登记库。"
        ]
    )


def _urban_row(counts: Counter[str]) -> list[object]:
    urban, rural, unknown = counts["urban"], counts["rural"], counts["unknown"]
    rate = urban / (urban + rural) if urban + rural else None
    return [urban, rural, unknown, urban + rural + unknown, rate]
