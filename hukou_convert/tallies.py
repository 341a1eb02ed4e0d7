"""The statistical sheets of the audit workbook: 分类汇总 (converted persons by district, township
and original nature, with a chart) and 城乡统计 (registered population in urban and rural units, and
户籍人口城镇化率), with division names from the division table in effect (the shipped NBS table,
overlaid with imported divisions). ``stats.py`` builds on the same pieces.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from openpyxl import Workbook
from openpyxl.chart import BarChart, Reference
from sqlalchemy import Engine, and_, or_, select
from sqlalchemy import func as sqlfunc

from .census import in_scope, is_active
from .codes import NATURE_LABELS, Action, CodeTable, Nature
from .cutover import CutoverResult
from .divisions import Division, by_code, division_lookup
from .profiles import Profile
from .register import RegisterMap
from .xlsx import HEADER_FILL, HEADER_FONT, Column, PageSetup, TableWriter, styled

AreaLevel = Literal["county", "township"]
UNKNOWN_DIVISION = "（未知区划）"
NATURE_ORDER = list(NATURE_LABELS)


@dataclass
class Places:
    """Names and urban-rural codes of divisions; unknown codes are shown as such. ``Places.of(engine)``
    is the table in effect in a database (imported divisions over the shipped ones); ``Places()``
    the shipped table alone."""

    table: dict[str, Division] = field(default_factory=by_code)

    @classmethod
    def of(cls, engine: Engine) -> Places:
        return cls(division_lookup(engine))

    @staticmethod
    def _full(code: str | None) -> str:
        return (code or "").strip().ljust(12, "0")[:12]

    def county(self, code: str | None) -> str:
        return self._full(code)[:6] + "000000"

    def township(self, code: str | None) -> str:
        return self._full(code)[:9] + "000"

    def area(self, code: str | None, by: AreaLevel) -> str:
        return self.county(code) if by == "county" else self.township(code)

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
        add_bar_chart(
            ws,
            "转换人数：按区县和原户口性质",
            [5 + i for i, nature in enumerate(NATURE_ORDER) if grand[nature]],
            header_row,
            last,
            category_column=2,
            anchor="N2",
        )
    return total


def add_bar_chart(
    ws: Any,
    title: str,
    series_columns: list[int],
    header_row: int,
    last_row: int,
    *,
    category_column: int,
    anchor: str,
    stacked: bool = True,
) -> None:
    """A column chart over rows ``header_row + 1 .. last_row``: one series per column (its title
    from the header row), categories from ``category_column``."""
    chart = BarChart()
    chart.type = "col"
    if stacked:
        chart.grouping = "stacked"
        chart.overlap = 100
    chart.title = title
    chart.y_axis.title = "人"
    chart.width, chart.height = 22, 11
    for col in series_columns:
        chart.add_data(
            Reference(ws, min_col=col, min_row=header_row, max_row=last_row), titles_from_data=True
        )
    chart.set_categories(
        Reference(ws, min_col=category_column, min_row=header_row + 1, max_row=last_row)
    )
    ws.add_chart(chart, anchor)


def _code_cell(ws: Any, code: str) -> Any:
    cell = styled(ws, code)
    cell.number_format = "@"
    return cell


# ---------------------------------------------------------------- 城乡统计


def write_urban_rural(
    engine: Engine, wb: Workbook, page: PageSetup, places: Places, result: CutoverResult
) -> None:
    per_county = urban_rural_by_area(
        places,
        registered_by_division(engine, result.register, result.profile, result.census.codes),
        "county",
    )
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
        table.append([county, places.name(county, 3), *urban_row(counts)])
    table.append_total(["合计", None, *urban_row(total)])
    table.finish()
    table.append_below([])
    table.append_below([URBAN_RURAL_BASIS + "统计时点：写出本工作簿时的登记库。"])


URBAN_RURAL_BASIS = (
    "口径：范围内、状态有效、常住户口登记的人口（不含未落常住户口、暂住户口），按人员登记所在"
    "村级单位的城乡分类代码统计（1xx 城镇，2xx 乡村；代码不在区划表中的计入“城乡属性不明”）。"
    "户籍人口城镇化率 = 城镇人口 ÷（城镇人口 + 乡村人口）。"
)


def registered_by_division(
    engine: Engine, register: RegisterMap, profile: Profile, codes: CodeTable
) -> dict[str, int]:
    """Registered population per division code, in one grouped query: active records in the
    profile's scope, in the permanent register (not 未落常住户口 / 暂住户口)."""
    R = register.table
    not_permanent = [e.raw for e in codes.entries() if e.action is Action.NOT_PERMANENT]
    registered = and_(
        in_scope(R, profile.scope),
        is_active(R, profile.active_statuses),
        or_(R.c.hukou_type.is_(None), R.c.hukou_type.notin_(not_permanent)),
    )
    with engine.connect() as conn:
        return {
            division or "": int(n)
            for division, n in conn.execute(
                select(R.c.division_code, sqlfunc.count())
                .where(registered)
                .group_by(R.c.division_code)
            )
        }


def urban_rural_by_area(
    places: Places, per_division: dict[str, int], by: AreaLevel
) -> dict[str, Counter[str]]:
    """Per county or township: persons in urban units, rural units, and units of unknown kind."""
    out: dict[str, Counter[str]] = {}
    for division, n in per_division.items():
        urban = places.is_urban(division)
        key = "unknown" if urban is None else "urban" if urban else "rural"
        out.setdefault(places.area(division, by), Counter())[key] += n
    return out


def urbanisation_rate(urban: int, rural: int) -> float | None:
    """户籍人口城镇化率 = urban ÷ (urban + rural); None when there is neither."""
    return urban / (urban + rural) if urban + rural else None


def urban_row(counts: Counter[str]) -> list[object]:
    """Urban, rural, unknown, total, rate."""
    urban, rural, unknown = counts["urban"], counts["rural"], counts["unknown"]
    return [urban, rural, unknown, urban + rural + unknown, urbanisation_rate(urban, rural)]
