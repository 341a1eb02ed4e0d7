"""``--split-by county|township``: one detail workbook per area, written in parallel processes.

Auditors sign off area by area, and one workbook of ten million rows is the night's long pole. A real
run's 变更明细 is written as one workbook per area (its own summary and detail sheets, its own
``.sha256``), each by a worker process of its own, from the history table; the city workbook keeps
every other sheet, lists the area workbooks, and its verdict checks that their rows add up.

Each worker opens its own connection from the database URL (the password travels in memory to the
child process, never on a command line or in a log) and reads the run as recorded.
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from . import schema
from .db import make_engine, translate_errors
from .instants import format_instant, now
from .progress import Progress, no_progress
from .tallies import AreaLevel, Places
from .workbook import MODE_CUTOVER, AreaWorkbook, escaped, summary_table, write_detail_rows
from .xlsx import PageSetup, write_workbook

H = schema.history


@dataclass(frozen=True)
class _AreaJob:
    url: str  # with its password: passed to the worker in memory only
    run_id: str
    area: str
    name: str
    divisions: tuple[str | None, ...]  # the division codes of the run's records in this area
    target: Path
    unmasked: bool


def areas_of_run(
    engine: Engine, run_id: str, places: Places, by: AreaLevel
) -> dict[str, list[str | None]]:
    """Area code -> the division codes of the run's live history rows in it."""
    out: dict[str, list[str | None]] = {}
    with engine.connect() as conn:
        for (division,) in conn.execute(
            select(H.c.division_code)
            .where(H.c.run_id == run_id, H.c.reverted_at.is_(None))
            .group_by(H.c.division_code)
        ):
            out.setdefault(places.area(division, by), []).append(division)
    return out


def write_area_workbooks(
    engine: Engine,
    run_id: str,
    profile_name: str,
    out_dir: Path,
    *,
    by: AreaLevel,
    unmasked: bool,
    processes: int,
    progress: Progress = no_progress,
) -> list[AreaWorkbook]:
    """Every area's detail workbook of a finished run, ``processes`` at a time."""
    places = Places.of(engine)
    level = 3 if by == "county" else 4
    with translate_errors():
        areas = areas_of_run(engine, run_id, places, by)
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    safe_profile = re.sub(r"[^A-Za-z0-9_.-]+", "_", profile_name) or "profile"
    suffix = "-UNMASKED" if unmasked else ""
    url = engine.url.render_as_string(hide_password=False)
    jobs = [
        _AreaJob(
            url,
            run_id,
            area,
            places.name(area, level),
            tuple(divisions),
            out_dir
            / (
                f"hukou-{MODE_CUTOVER[0]}-{MODE_CUTOVER[1]}-{safe_profile}-{safe_run}"
                f"-{by}-{area[: 6 if by == 'county' else 9]}{suffix}.xlsx"
            ),
            unmasked,
        )
        for area, divisions in sorted(areas.items())
    ]
    written: list[AreaWorkbook] = []
    with progress("分区工作簿 area workbooks", len(jobs), "个") as advance:
        for done in _run_jobs(jobs, processes):
            written.append(done)
            advance(1)
    return sorted(written, key=lambda w: w.area)


def _run_jobs(jobs: list[_AreaJob], processes: int) -> Iterator[AreaWorkbook]:
    if processes <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _write_area(job)
        return
    # forkserver: a child starts clean, never with a copy of the parent's connections
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(_write_area, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def _write_area(job: _AreaJob) -> AreaWorkbook:
    """In a worker process: one area's workbook, from the history table."""
    from .cutover import load_run_result
    from .db import parse_url

    engine = make_engine(parse_url(job.url))
    try:
        with translate_errors():
            result = load_run_result(engine, job.run_id, with_findings=False)
            page = escaped(
                PageSetup(
                    f"正式 CUTOVER — {result.profile.name} — 运行 {job.run_id} — {job.name}",
                    "00B050",
                )
            )
            banner = f"正式 CUTOVER：{job.name}（{job.area}）变更明细，运行编号 {job.run_id}"

            def build(wb: Any) -> int:
                summary = summary_table(wb, page, banner, "006100", job.unmasked)
                rows = write_detail_rows(
                    engine,
                    wb,
                    page,
                    Places.of(engine),
                    result,
                    job.unmasked,
                    {},
                    no_progress,
                    divisions=job.divisions,
                )
                summary.append(["运行编号", job.run_id, ""])
                summary.append(["区域", f"{job.name}（{job.area}）", ""])
                summary.append(["截止时点", format_instant(result.cutoff.instant), ""])
                summary.append(["本区变更明细行数", rows, "与城市汇总工作簿“分区工作簿”表相核"])
                summary.append(["工作簿生成时间", now(), "北京时间 +08:00"])
                summary.append(["个人信息", "未脱敏" if job.unmasked else "已脱敏", ""])
                summary.finish()
                return rows

            rows, saved = write_workbook(job.target, build)
    finally:
        engine.dispose()
    return AreaWorkbook(job.area, job.name, saved.path, saved.sha256, rows)
