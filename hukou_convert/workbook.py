"""The audit workbook: what a rehearsal or a cutover changed, for auditors to filter and sign off.

One xlsx per rehearsal and per real run, streamed with openpyxl's write-only mode (memory does not
grow with the register), personal data masked unless asked otherwise, no cell ever a formula, written
under a temporary name and renamed when complete, 0600, with a ``.sha256`` file beside it.

Sheets: 概要 (summary and verdict), 分类汇总 (by district, township and original nature, with a
chart), 变更明细 (one row per converted record, continued on 变更明细2 … past a sheet's rows),
异常清单 (the findings) and 城乡统计 (urban and rural registered population per district).

The detail rows of a rehearsal are the records the run WOULD convert, selected with the predicate
the conversion itself uses; those of a real run are its history rows. Both come out identical.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.worksheet.worksheet import Worksheet
from sqlalchemy import Engine, Select, and_, func, or_, select

from . import __version__, schema
from .census import in_scope, is_active
from .codes import CATEGORY_LABELS, NATURE_LABELS, RESIDENT_TYPE, Category, Nature
from .conversion import conversion_expressions
from .cutover import CutoverResult, load_run_result
from .db import display_url, translate_errors
from .errors import UsageError
from .findings import Finding
from .idnumbers import maskers
from .inflight import Outcome
from .instants import format_instant, now
from .plan import SHOWN_RECORDS, PlanComparison
from .progress import Progress, no_progress
from .register import RecordKey, RegisterMap
from .tallies import BREAKDOWN_COLUMNS, AreaLevel, Places, fill_breakdown, write_urban_rural
from .verify import verify_run
from .xlsx import Column, PageSetup, TableWriter, styled, write_workbook

H = schema.history

# rows fetched at a time: each area writer holds this many rows (1M persons, 2 writers: 98 MB ->
# 85 MB each at 2,000; no slower)
YIELD_PER = 2_000
SEVERITY_LABELS = {"error": "错误", "warning": "警告"}

MODE_REHEARSAL = ("rehearsal", "演练")
MODE_CUTOVER = ("cutover", "正式")


@dataclass(frozen=True)
class AreaWorkbook:
    """One area's detail workbook (``--split-by``)."""

    area: str  # the area's division code (county: 6 digits + 000000; township: 9 + 000)
    name: str
    path: Path
    sha256: str
    rows: int
    peak_rss_mb: float = 0.0  # of the process that wrote it (benchmarks)


@dataclass
class WorkbookResult:
    path: Path
    sha256_path: Path
    sha256: str
    detail_rows: int
    sheets: list[str]
    verdict_ok: bool
    unmasked: bool
    areas: list[AreaWorkbook] = field(default_factory=list)  # --split-by: the detail workbooks


@dataclass
class _Check:
    name: str
    ok: bool
    detail: str


# ---------------------------------------------------------------- entry points


def write_run_workbook(
    engine: Engine,
    result: CutoverResult,
    out_dir: Path,
    *,
    unmasked: bool = False,
    findings: Sequence[Finding] | None = None,
    progress: Progress = no_progress,
    split_by: AreaLevel | None = None,
    processes: int = 1,
) -> WorkbookResult:
    """Write the audit workbook of a rehearsal or a finished real run into ``out_dir``.

    ``findings`` default to those the result carries (``result.findings``). With ``split_by`` (a
    real run) the 变更明细 goes into one workbook per area, ``processes`` written at a time, and
    the city workbook lists them.
    """
    if findings is None:
        findings = result.findings
    if not result.rehearsal and result.run_id is None:
        raise ValueError("a real run's workbook needs its run id")
    if split_by is not None and result.rehearsal:
        raise UsageError("--split-by is for the real run's workbooks (cutover, report)")
    chosen = findings
    areas: list[AreaWorkbook] | None = None
    publish = discard = None
    if split_by is not None:
        from .split import write_area_workbooks

        areas, publish, discard = write_area_workbooks(
            engine,
            str(result.run_id),
            result.profile.name,
            out_dir,
            by=split_by,
            unmasked=unmasked,
            processes=processes,
            progress=progress,
        )
    try:
        with translate_errors():
            (detail_rows, ok), saved = write_workbook(
                out_dir / workbook_name(result, unmasked),
                lambda wb: _build(wb, engine, result, unmasked, chosen, progress, areas),
            )
    except BaseException:
        if discard is not None:
            discard()
        raise
    if publish is not None:
        publish()  # the area workbooks join the city workbook that lists them
    return WorkbookResult(
        saved.path,
        saved.sha256_path,
        saved.sha256,
        detail_rows,
        saved.sheets,
        ok,
        unmasked,
        areas or [],
    )


def rewrite_report(
    engine: Engine,
    run_id: str | None,
    out_dir: Path,
    unmasked: bool = False,
    progress: Progress = no_progress,
    findings: Sequence[Finding] | None = None,
    split_by: AreaLevel | None = None,
    processes: int = 1,
) -> WorkbookResult:
    """The workbook of a finished real run, written again (default: the latest run)."""
    result = load_run_result(engine, run_id)
    return write_run_workbook(
        engine,
        result,
        out_dir,
        unmasked=unmasked,
        findings=findings,
        progress=progress,
        split_by=split_by,
        processes=processes,
    )


def workbook_name(result: CutoverResult, unmasked: bool) -> str:
    mode = MODE_REHEARSAL if result.rehearsal else MODE_CUTOVER
    profile = re.sub(r"[^A-Za-z0-9_.-]+", "_", result.profile.name) or "profile"
    if result.rehearsal:
        when = result.started_at or now()
        ident = f"{when:%Y%m%dT%H%M%S}"
    else:
        ident = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(result.run_id))
    suffix = "-UNMASKED" if unmasked else ""
    return f"hukou-{mode[0]}-{mode[1]}-{profile}-{ident}{suffix}.xlsx"


# ---------------------------------------------------------------- building the workbook


def _build(
    wb: Workbook,
    engine: Engine,
    result: CutoverResult,
    unmasked: bool,
    findings: Sequence[Finding],
    progress: Progress,
    areas: list[AreaWorkbook] | None = None,
) -> tuple[int, bool]:
    places = Places.of(engine)
    if result.rehearsal:
        banner = "演练 REHEARSAL：本工作簿是演练结果，数据库未作任何修改，不是正式转换记录"
        page = PageSetup(f"演练 REHEARSAL — {result.profile.name} — 非正式转换记录", "FF9900")
    else:
        banner = f"正式 CUTOVER：正式转换记录，运行编号 {result.run_id}"
        page = PageSetup(f"正式 CUTOVER — {result.profile.name} — 运行 {result.run_id}", "00B050")
    page = escaped(page)
    color = "C00000" if result.rehearsal else "006100"
    summary = summary_table(wb, page, banner, color, unmasked)
    breakdown = TableWriter(wb, "分类汇总", BREAKDOWN_COLUMNS, page)
    by_division: dict[str, Counter[Nature]] = {}
    if areas is None:
        detail_rows = write_detail_rows(
            engine, wb, page, places, result, unmasked, by_division, progress
        )
    else:  # the details are in the area workbooks: the breakdown from the history
        by_division = _converted_by_division(engine, result)
        detail_rows = sum(a.rows for a in areas)
        _write_area_list(wb, page, areas)
    table_total = fill_breakdown(breakdown, places, by_division)
    _write_findings(wb, page, findings, unmasked)
    if result.plan_comparison is not None:
        _write_comparison(engine, wb, page, result.plan_comparison, unmasked, result.register)
    write_urban_rural(engine, wb, page, places, result)
    checks = _verdict(engine, result, detail_rows, table_total)
    ok = all(c.ok for c in checks)
    _fill_summary(summary, engine, result, unmasked, findings, detail_rows, checks, wb.sheetnames)
    return detail_rows, ok


def escaped(page: PageSetup) -> PageSetup:
    """The banner as a print header shows it (& is the header's escape character)."""
    return PageSetup(page.banner.replace("&", "&&"), page.tab_color)


AREA_COLUMNS = [
    Column("区域代码", 14, "code"),
    Column("区域名称", 20),
    Column("变更明细行数", 14, "int"),
    Column("工作簿", 70),
    Column("SHA-256", 70, "code"),
]


def _write_area_list(wb: Workbook, page: PageSetup, areas: list[AreaWorkbook]) -> None:
    table = TableWriter(wb, "分区工作簿", AREA_COLUMNS, page)
    for a in areas:
        table.append([a.area, a.name, a.rows, a.path.name, a.sha256])
    table.append_total(["合计", None, sum(a.rows for a in areas), None, None])
    table.finish()


def _converted_by_division(engine: Engine, result: CutoverResult) -> dict[str, Counter[Nature]]:
    out: dict[str, Counter[Nature]] = {}
    with engine.connect() as conn:
        for division, nature, n in conn.execute(
            select(H.c.division_code, H.c.original_nature, func.count())
            .where(H.c.run_id == result.run_id, H.c.reverted_at.is_(None))
            .group_by(H.c.division_code, H.c.original_nature)
        ):
            out.setdefault(division or "", Counter())[Nature(nature)] += int(n)
    return out


def _text_font(color: str, size: int = 14) -> Font:
    return Font(bold=True, size=size, color=color)


def summary_table(
    wb: Workbook, page: PageSetup, banner: str, color: str, unmasked: bool
) -> TableWriter:
    """The 概要 sheet's table (项目, 内容, 说明) under a banner and the privacy notice."""
    privacy = (
        "未脱敏 UNMASKED：本工作簿含完整公民身份号码和姓名，须按个人信息保护要求保管"
        if unmasked
        else "个人信息已脱敏：公民身份号码保留前6位和后4位，姓名保留首字"
    )

    def preamble(ws: Worksheet) -> list[list[object]]:
        return [
            [styled(ws, banner, _text_font(color, 16))],
            [styled(ws, privacy, _text_font("C00000" if unmasked else "000000", 11))],
            [],
        ]

    columns = [Column("项目", 26), Column("内容", 60), Column("说明", 70)]
    return TableWriter(wb, "概要", columns, page, preamble)


def _fill_summary(
    table: TableWriter,
    engine: Engine,
    result: CutoverResult,
    unmasked: bool,
    findings: Sequence[Finding],
    detail_rows: int,
    checks: list[_Check],
    sheets: list[str],
) -> None:
    c = result.census
    p = result.profile
    rows: list[tuple[str, object, str]] = [
        ("模式", "演练（未写入数据库）" if result.rehearsal else "正式转换", ""),
        ("运行编号", result.run_id or "（演练无运行编号）", ""),
        ("辖区", f"{p.display_name}（{p.name}）" if p.display_name else p.name, ""),
        ("政策文件", p.policy_document, ""),
        ("范围（区划代码前缀）", ",".join(p.scope), ""),
        ("截止时点", result.cutoff.instant, format_instant(result.cutoff.instant)),
        ("截止时点依据", result.cutoff.source, ""),
        ("开始时间", result.started_at, "北京时间 +08:00"),
        ("结束时间", result.finished_at, "北京时间 +08:00"),
        ("工作簿生成时间", now(), "北京时间 +08:00"),
        ("工具版本", __version__, "hukou-convert"),
        ("数据库", display_url(engine.url), "不含密码"),
        (
            "登记库表",
            result.register.display_name,
            "内置登记表"
            if result.register.builtin
            else f"原系统登记表，就地转换；映射文件 {result.register.source}",
        ),
        (
            "登记库指纹 SHA-256",
            result.fingerprint or "未取得",
            "转换前读取的登记库，按记录号顺序的全部行"
            if result.fingerprint
            # the run was killed after its first commit, before the fingerprint was finished
            else "运行在指纹读取完成前中断，续跑无法再读取转换前的登记库",
        ),
        ("个人信息", "未脱敏" if unmasked else "已脱敏", ""),
        ("登记记录总数", c.total, ""),
        ("范围外", c.out_of_scope, "区划代码不在范围内"),
        ("范围内非有效状态", c.inactive, "注销、死亡等"),
        ("范围内有效", c.in_scope_active, "= 转换 + 已是居民户口 + 未落常住/暂住 + 未映射"),
        ("应转换" if result.rehearsal else "已转换", result.converted, "改登记为居民户口"),
        ("已是居民户口", c.already_resident, "无需转换"),
        ("不在常住户口登记内", c.not_permanent, "未落常住户口、暂住户口：不转换"),
        ("未映射的户口性质", sum(v.count for v in c.unmapped()), "不猜测：须补充代码表"),
        ("暂缓转换（待人工核查）", len(result.held), "配置 hold_back 的异常类别：见 异常清单"),
        ("异常", len(findings), "见 异常清单"),
        ("变更明细行数", detail_rows, "、".join(s for s in sheets if s.startswith("变更明细"))),
    ]
    for nature, category in sorted(result.converted_by, key=lambda k: (k[0].value, k[1] or "")):
        cat = CATEGORY_LABELS[category] if category else "户别不明"
        rows.append(
            (f"  {NATURE_LABELS[nature]} / {cat}", result.converted_by[(nature, category)], "")
        )
    ok = all(ch.ok for ch in checks)
    rows.append(
        ("核验结论", "通过" if ok else "不通过", "; ".join(_failed(checks)) or "全部核验通过")
    )
    for ch in checks:
        rows.append((f"核验：{ch.name}", "通过" if ch.ok else "不通过", ch.detail))
    for label, value, note in rows:
        table.append([label, value, note])
    table.finish()


def _failed(checks: list[_Check]) -> list[str]:
    return [ch.name for ch in checks if not ch.ok]


def _verdict(
    engine: Engine, result: CutoverResult, detail_rows: int, table_total: int
) -> list[_Check]:
    c = result.census
    checks: list[_Check] = []
    if result.rehearsal:
        accounted = c.to_convert + c.already_resident + c.not_permanent
        unmapped = c.unmapped()
        checks.append(
            _Check(
                "普查覆盖范围内全部有效记录",
                accounted == c.in_scope_active,
                f"范围内有效 {c.in_scope_active}，已归类 {accounted}",
            )
        )
        checks.append(
            _Check(
                "无未映射的户口性质（正式转换可以开始）",
                not unmapped,
                "无"
                if not unmapped
                else "；".join(
                    f"{'(空)' if v.raw_code is None else v.raw_code}: {v.count}" for v in unmapped
                ),
            )
        )
    else:
        verified = verify_run(engine, result.run_id)
        checks.extend(_Check(ch.name, ch.ok, ch.detail) for ch in verified.checks)
    expected = result.converted
    checks.append(
        _Check("变更明细行数 = 转换人数", detail_rows == expected, f"{detail_rows} / {expected}")
    )
    checks.append(
        _Check("分类汇总合计 = 转换人数", table_total == expected, f"{table_total} / {expected}")
    )
    return checks


# ---------------------------------------------------------------- 分类汇总


def _would_convert(result: CutoverResult, raws: list[str]) -> Any:
    """The predicate the conversion uses (cutover.convert_batches), for a rehearsal."""
    p, R = result.profile, result.register.table
    return and_(in_scope(R, p.scope), is_active(R, p.active_statuses), R.c.hukou_type.in_(raws))


# ---------------------------------------------------------------- 变更明细


DETAIL_COLUMNS = [
    Column("记录号", 10, "int", "0"),
    Column("公民身份号码", 21, "code"),
    Column("姓名", 10),
    Column("户号", 19, "code"),
    Column("行政区划代码", 15, "code"),
    Column("行政区划名称", 26),
    Column("原户口性质代码", 12, "code"),
    Column("原户口类别", 16),
    Column("原户口性质", 12),
    Column("户别", 8),
    Column("新户口类别", 10),
    Column("生效时间（北京时间）", 20, "datetime"),
]


def _detail_query(
    result: CutoverResult, divisions: Sequence[str | None] | None = None
) -> Select[Any]:
    """(record id, ID number, name, household, division, original code, nature, category,
    effective at) in key order, for the run's history or the rehearsal's would-be conversion;
    only records of ``divisions`` when given (one area's workbook)."""
    reg = result.register
    R = reg.table
    if result.rehearsal:
        raws, nature, category, _label = conversion_expressions(result.census.codes, reg)
        return (
            select(
                R.c.record_id,
                R.c.id_number,
                reg.column("name"),
                reg.column("household_id"),
                R.c.division_code,
                R.c.hukou_type,
                nature,
                category,
            )
            .where(_would_convert(result, raws))
            .order_by(R.c.record_id)
        )
    hk = reg.ours(H)
    return (
        select(
            hk,
            H.c.id_number,
            reg.column("name"),
            reg.column("household_id"),
            H.c.division_code,
            H.c.original_code,
            H.c.original_nature,
            H.c.household_category,
            H.c.effective_at,
        )
        .select_from(H.outerjoin(R, R.c.record_id == hk))
        .where(H.c.run_id == result.run_id, H.c.reverted_at.is_(None))
        .where(*([] if divisions is None else [_in_divisions(H.c.division_code, divisions)]))
        .order_by(hk, H.c.history_id)
    )


def _in_divisions(column: Any, divisions: Sequence[str | None]) -> Any:
    named = [d for d in divisions if d is not None]
    clauses = [column.in_(named)] if named else []
    if None in divisions:
        clauses.append(column.is_(None))
    return or_(*clauses)


def _moved_codes(result: CutoverResult) -> dict[RecordKey, str]:
    """Record -> code as of the cutoff, for the approved applications a rehearsal predicts the
    real run applies before converting (the real run's history already holds them). 农转非/非转农
    keeps the 户别, so only the code and the nature change."""
    if not result.rehearsal:
        return {}
    return {
        d.record_id: d.to_code
        for d in result.decisions
        if d.outcome is Outcome.APPLIED
        and d.to_code is not None
        and d.record_id is not None
        and not d.stored
    }


def write_detail_rows(
    engine: Engine,
    wb: Workbook,
    page: PageSetup,
    places: Places,
    result: CutoverResult,
    unmasked: bool,
    by_division: dict[str, Counter[Nature]],
    progress: Progress,
    divisions: Sequence[str | None] | None = None,
) -> int:
    """The detail rows, streamed; counts them by division and nature into ``by_division``.
    ``divisions``: only the records of these division codes (one area's workbook)."""
    codes = result.census.codes
    ident, name = maskers(unmasked)
    table = TableWriter(wb, "变更明细", DETAIL_COLUMNS, page)
    label_cache: dict[str | None, str] = {}
    cutoff = result.cutoff.instant
    moved = _moved_codes(result)
    # a rehearsal lists what the run will convert: records held back for review are not
    held = set(result.held) if result.rehearsal else set()
    natures = {n.value: n for n in Nature}  # a lookup: Nature(value) per row is measurable
    categories = {c.value: c for c in Category}
    with (
        progress("工作簿 workbook", result.converted, "行") as advance,
        engine.connect() as conn,
    ):
        rows = conn.execution_options(stream_results=True, yield_per=YIELD_PER).execute(
            _detail_query(result, divisions)
        )
        for partition in rows.partitions():
            for r in partition:
                if r[0] in held:
                    continue
                division = r[4]
                if division not in label_cache:
                    label_cache[division] = places.label(division)
                raw = r[5]
                nature = natures.get(r[6]) or Nature(r[6])  # Nature(): the error names it
                if r[0] in moved:  # rehearsal: an approved 农转非/非转农 applied first
                    raw = moved[r[0]]
                    entry = codes.get(raw)
                    assert entry is not None and entry.nature is not None
                    nature = entry.nature
                category = (categories.get(r[7]) or Category(r[7])) if r[7] else None
                area = division or ""
                if (counts := by_division.get(area)) is None:
                    counts = by_division[area] = Counter()
                counts[nature] += 1
                table.append(
                    [
                        r[0],
                        ident(r[1]),
                        name(r[2]),
                        r[3],
                        division,
                        label_cache[division],
                        raw,
                        codes.label(raw) if raw is not None else "",
                        NATURE_LABELS[nature],
                        CATEGORY_LABELS[category] if category else "",
                        RESIDENT_TYPE,
                        r[8] if len(r) > 8 else cutoff,
                    ]
                )
            advance(len(partition))
    table.finish()
    return table.data_rows


# ---------------------------------------------------------------- 演练对比

COMPARISON_COLUMNS = [
    Column("类别", 12),
    Column("项目", 30, "code"),
    Column("公民身份号码", 21, "code"),
    Column("姓名", 10),
    Column("演练时", 26),
    Column("正式转换时", 26),
]
_KIND_LABELS = {
    "parameter": "参数",
    "census": "统计",
    "record": "记录",
    "count": "转换数",
    "application": "在办业务",
    "finding": "异常",
}


def _write_comparison(
    engine: Engine,
    wb: Workbook,
    page: PageSetup,
    comparison: PlanComparison,
    unmasked: bool,
    reg: RegisterMap,
) -> None:
    """The real run against the rehearsal's plan: every difference, records by key (masked)."""
    R = reg.table
    ident, name = maskers(unmasked)
    differences = comparison.before + comparison.after
    record_keys = reg.sorted_keys(
        {
            reg.key_of(d.key)
            for d in differences
            if d.kind == "record" and (d.key.isdigit() or not reg.key_is_integer)
        }
    )
    people: dict[RecordKey, tuple[str | None, str | None]] = {}
    with engine.connect() as conn:
        for start in range(0, len(record_keys), 500):
            for key, number, person in conn.execute(
                select(R.c.record_id, R.c.id_number, reg.column("name")).where(
                    R.c.record_id.in_(record_keys[start : start + 500])
                )
            ):
                people[reg.key_of(key)] = (number, person)
    state = "一致" if comparison.matches else "不一致"
    notes = [
        f"演练计划 {Path(comparison.plan_path).name}：{state}",
        (
            "转换前核对数据库文件即演练所读文件（SQLite 变更计数、大小与修改时间未变），未再逐条读取"
            if comparison.unchanged_file
            else "转换前核对登记库即演练所读的各行（PostgreSQL：演练快照后无行写入，行数相同），未再逐条读取"
            if comparison.unchanged_rows
            else "转换前已比对登记库的每一条记录"
        )
        if comparison.compared_before
        else "转换前未比对（本次为续跑或已完成的运行）",
    ]
    if comparison.accepted:
        notes.append("登记库在演练后有变化，操作员以 --accept-changes 确认继续")
    if comparison.record_differences > len([d for d in differences if d.kind == "record"]):
        notes.append(
            f"记录差异共 {comparison.record_differences} 条，下表列出前 {SHOWN_RECORDS} 条"
        )

    def preamble(ws: Any) -> list[list[object]]:
        return [
            [styled(ws, text, _text_font("C00000" if not comparison.matches else "006100", 12))]
            for text in notes
        ]

    table = TableWriter(wb, "演练对比", COMPARISON_COLUMNS, page, preamble=preamble)
    for d in differences:
        number, person = (
            people.get(reg.key_of(d.key), (None, None))
            if d.kind == "record" and (d.key.isdigit() or not reg.key_is_integer)
            else (None, None)
        )
        table.append(
            [
                _KIND_LABELS.get(d.kind, d.kind),
                d.key,
                ident(number) if number else "",
                name(person) if person else "",
                d.expected,
                d.actual,
            ]
        )
    table.finish()


# ---------------------------------------------------------------- 异常清单


def _write_findings(
    wb: Workbook, page: PageSetup, findings: Sequence[Finding], unmasked: bool
) -> None:
    ident, name = maskers(unmasked)
    columns = [
        Column("序号", 7, "int", "0"),
        Column("类别代码", 22, "code"),
        Column("类别", 10),
        Column("严重程度", 9),
        Column("记录号", 10, "int", "0"),
        Column("公民身份号码", 21, "code"),
        Column("18位号码（由15位升级）", 21, "code"),
        Column("姓名", 10),
        Column("说明", 50),
        Column("处理", 40),
    ]
    table = TableWriter(wb, "异常清单", columns, page)
    for i, f in enumerate(findings, start=1):
        table.append(
            [
                i,
                f.code,
                f.category,
                SEVERITY_LABELS.get(f.severity, f.severity),
                f.record_id,
                ident(f.id_number),
                ident(f.upgraded_id) if f.upgraded_id else None,
                name(f.name),
                f.explanation,
                f.action,
            ]
        )
    table.finish()
