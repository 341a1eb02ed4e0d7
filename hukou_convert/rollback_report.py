"""The rollback workbook: what a rollback restored, and what it left converted, for the auditors.

Sheets: 概要 (the run, the outcome, counts and their check), 回退明细 (one row per restored record:
the code and 户别 it got back, when; continued on 回退明细2 … past a sheet's rows) and 未回退 (records
changed since the cutover that the rollback skipped: their history rows stay live). Streamed from the
history table like the audit workbook, masked unless asked otherwise, atomic 0600 with ``.sha256``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from openpyxl import Workbook
from sqlalchemy import ColumnElement, Engine, select

from . import schema
from .db import display_url, translate_errors
from .idnumbers import maskers
from .instants import now
from .progress import Advance, Progress, no_progress
from .rollback import RollbackResult
from .runs import find_run, run_codes, run_register
from .tallies import Places
from .workbook import DETAIL_COLUMNS, summary_table
from .xlsx import Column, PageSetup, TableWriter, write_workbook

H = schema.history
YIELD_PER = 10_000
OUTCOMES = {"reverted": "已回退", "resumed": "中断后继续，已回退", "already-reverted": "此前已回退"}

_RECORD = DETAIL_COLUMNS[:6]  # record, ID number, name, household, division code and name
RESTORED_COLUMNS = [
    *_RECORD,
    Column("恢复的户口性质代码", 14, "code"),
    Column("恢复的户口类别", 16),
    Column("恢复的户别", 10),
    Column("回退时间（北京时间）", 20, "datetime"),
]
SKIPPED_COLUMNS = [
    *_RECORD,
    Column("现户口性质", 14, "code"),
    Column("原户口性质代码", 14, "code"),
    Column("原户口类别", 16),
    Column("原因", 50),
]
CHANGED = "转换后登记已变更（户口性质、户别、区划或变更时间），未回退；历史记录仍有效"
GONE = "登记库中已无此记录，未回退；历史记录仍有效"


@dataclass
class RollbackWorkbook:
    path: Path
    sha256_path: Path
    sha256: str
    restored_rows: int
    skipped_rows: int
    sheets: list[str]
    unmasked: bool
    ok: bool  # the sheets hold exactly the restored and skipped counts of the rollback


def write_rollback_workbook(
    engine: Engine,
    result: RollbackResult,
    out_dir: Path,
    unmasked: bool = False,
    progress: Progress = no_progress,
) -> RollbackWorkbook:
    """Write the workbook of a finished rollback into ``out_dir``."""
    rid = result.run_id
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", rid)
    target = out_dir / f"hukou-rollback-回退-{safe}{'-UNMASKED' if unmasked else ''}.xlsx"
    run = find_run(engine, rid)
    reg = run_register(engine, run)
    R = reg.table
    codes = run_codes(engine, rid)
    places = Places.of(engine)
    ident, name = maskers(unmasked)
    labels: dict[str | None, str] = {}

    def place(code: str | None) -> str:
        if code not in labels:
            labels[code] = places.label(code)
        return labels[code]

    def stream(
        table: TableWriter, where: ColumnElement[bool], restored: bool, advance: Advance
    ) -> None:
        query = (
            select(
                reg.ours(H).label("record_id"),
                H.c.id_number,
                reg.column("name"),
                reg.column("household_id"),
                H.c.division_code,
                H.c.original_code,
                H.c.original_category_label,
                H.c.reverted_at,
                R.c.record_id.label("present"),
                R.c.hukou_type,
            )
            .select_from(H.outerjoin(R, R.c.record_id == reg.ours(H)))
            .where(H.c.run_id == rid, where)
            .order_by(reg.ours(H), H.c.history_id)
        )
        with engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=YIELD_PER).execute(query)
            for partition in rows.partitions():
                for r in partition:
                    lead = [
                        r.record_id,
                        ident(r.id_number),
                        name(r.name),
                        r.household_id,
                        r.division_code,
                        place(r.division_code),
                    ]
                    label = codes.label(r.original_code) if r.original_code is not None else ""
                    if restored:
                        tail = [r.original_code, label, r.original_category_label, r.reverted_at]
                    else:
                        why = CHANGED if r.present is not None else GONE
                        tail = [r.hukou_type, r.original_code, label, why]
                    table.append([*lead, *tail])
                advance(len(partition))

    def build(wb: Workbook, advance: Advance) -> tuple[int, int]:
        page = PageSetup(f"回退 ROLLBACK — 运行 {rid}".replace("&", "&&"), "C00000")
        banner = f"回退 ROLLBACK：运行 {rid} 的转换已撤销，以下为恢复的记录"
        summary = summary_table(wb, page, banner, "C00000", unmasked)
        restored = TableWriter(wb, "回退明细", RESTORED_COLUMNS, page)
        stream(restored, H.c.reverted_at.is_not(None), restored=True, advance=advance)
        restored.finish()
        skipped = TableWriter(wb, "未回退", SKIPPED_COLUMNS, page)
        stream(skipped, H.c.reverted_at.is_(None), restored=False, advance=advance)
        skipped.finish()
        ok = (restored.data_rows, skipped.data_rows) == (result.restored, result.skipped_changed)
        for label, value, note in [
            ("运行编号", rid, ""),
            ("结果", OUTCOMES.get(result.outcome, result.outcome), result.outcome),
            ("辖区", run.profile, ""),
            ("截止时点", run.cutoff, "北京时间 +08:00"),
            ("回退开始", result.started_at, "北京时间 +08:00"),
            ("回退结束", result.finished_at or run.reverted_at, "北京时间 +08:00"),
            ("已恢复记录", result.restored, "户口性质和户别恢复为转换前的值"),
            ("未回退（转换后已变更）", result.skipped_changed, "见 未回退"),
            ("回退明细行数", restored.data_rows, "、".join(restored.sheet_titles)),
            ("未回退行数", skipped.data_rows, ""),
            ("核验：明细行数 = 回退结果", "通过" if ok else "不通过", ""),
            ("数据库", display_url(engine.url), "不含密码"),
            ("工作簿生成时间", now(), "北京时间 +08:00"),
            ("个人信息", "未脱敏" if unmasked else "已脱敏", ""),
        ]:
            summary.append([label, value, note])
        summary.finish()
        return restored.data_rows, skipped.data_rows

    total = result.restored + result.skipped_changed
    with translate_errors(), progress("回退工作簿 workbook", total, "行") as advance:
        (restored_rows, skipped_rows), saved = write_workbook(target, lambda wb: build(wb, advance))
    return RollbackWorkbook(
        saved.path,
        saved.sha256_path,
        saved.sha256,
        restored_rows,
        skipped_rows,
        saved.sheets,
        unmasked,
        (restored_rows, skipped_rows) == (result.restored, result.skipped_changed),
    )
