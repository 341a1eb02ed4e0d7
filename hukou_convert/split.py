"""``--split-by county|township``: one detail workbook per area, written in parallel processes.

Auditors sign off area by area, and one workbook of ten million rows is the night's long pole. A real
run's 变更明细 is written as one workbook per area (its own summary and detail sheets, its own
``.sha256``), each by a worker process of its own, from the history table; the city workbook keeps
every other sheet, lists the area workbooks, and its verdict checks that their rows add up.

Each worker opens its own connection from the database URL (the password travels in memory to the
child process, never on a command line or in a log) and reads the run as recorded.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import resource
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from . import schema
from .db import make_engine, sqlite_path, translate_errors
from .errors import HukouError, RegisterStateError
from .instants import format_instant, now
from .progress import Progress, no_progress
from .tallies import AreaLevel, Places
from .workbook import MODE_CUTOVER, AreaWorkbook, escaped, summary_table, write_detail_rows
from .xlsx import PageSetup, write_workbook

H = schema.history


@dataclass(frozen=True)
class _AreaJob:
    url: str = field(repr=False)  # with its password: passed to the worker in memory only
    run_id: str
    area: str
    name: str
    divisions: tuple[str | None, ...]  # the division codes of the run's records in this area
    records: int  # the run's live history rows in this area: the workbook must hold as many
    target: Path
    unmasked: bool


def areas_of_run(
    engine: Engine, run_id: str, places: Places, by: AreaLevel
) -> dict[str, tuple[list[str | None], int]]:
    """Area code -> (the division codes of the run's live history rows in it, their count)."""
    out: dict[str, tuple[list[str | None], int]] = {}
    with engine.connect() as conn:
        for division, n in conn.execute(
            select(H.c.division_code, func.count())
            .where(H.c.run_id == run_id, H.c.reverted_at.is_(None))
            .group_by(H.c.division_code)
        ):
            codes, total = out.get(places.area(division, by), ([], 0))
            codes.append(division)
            out[places.area(division, by)] = (codes, total + int(n))
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
) -> tuple[list[AreaWorkbook], Callable[[], None], Callable[[], None]]:
    """Every area's detail workbook of a finished run, ``processes`` at a time, written into a
    staging directory inside ``out_dir``. Returns them with ``publish`` (move them into
    ``out_dir``, once the city workbook that lists them is saved) and ``discard``: a failure
    leaves a set written earlier as it was, never half replaced."""
    if processes > 1 and engine.dialect.name == "sqlite" and sqlite_path(engine) is None:
        processes = 1  # an in-memory database is private to this process
    places = Places.of(engine)
    level = 3 if by == "county" else 4
    with translate_errors():
        areas = areas_of_run(engine, run_id, places, by)
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    safe_profile = re.sub(r"[^A-Za-z0-9_.-]+", "_", profile_name) or "profile"
    suffix = "-UNMASKED" if unmasked else ""
    url = engine.url.render_as_string(hide_password=False)
    staging = out_dir / f".hukou-areas-{safe_run}-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=False, mode=0o700)
    names: set[str] = set()
    jobs = []
    for area, (divisions, records) in sorted(areas.items()):
        code = re.sub(r"[^0-9A-Za-z]+", "_", area[: 6 if by == "county" else 9]) or "_"
        name = f"hukou-{MODE_CUTOVER[0]}-{MODE_CUTOVER[1]}-{safe_profile}-{safe_run}-{by}-{code}"
        while name.lower() in names:  # two odd codes alike once made safe for a file name
            name += "_"
        names.add(name.lower())
        jobs.append(
            _AreaJob(
                url,
                run_id,
                area,
                places.name(area, level),
                tuple(divisions),
                records,
                staging / f"{name}{suffix}.xlsx",
                unmasked,
            )
        )

    def discard() -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def publish() -> None:
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
        staging.rmdir()

    written: list[AreaWorkbook] = []
    try:
        with progress("分区工作簿 area workbooks", len(jobs), "个") as advance:
            for done in _run_jobs(engine, jobs, processes):
                written.append(done)
                advance(1)
    except BaseException:
        discard()
        raise
    final = [replace(w, path=out_dir / w.path.name) for w in written]
    return sorted(final, key=lambda w: w.area), publish, discard


def _run_jobs(engine: Engine, jobs: list[_AreaJob], processes: int) -> Iterator[AreaWorkbook]:
    if processes <= 1 or len(jobs) <= 1:
        for job in jobs:  # in this process, on the caller's engine
            yield _write_area(job, engine)
        return
    # forkserver: a child starts clean, never with a copy of the parent's connections
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(max_workers=min(processes, len(jobs)), mp_context=context)
    try:
        futures = [pool.submit(_write_area, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()
    except BrokenProcessPool:
        pool.shutdown(wait=True, cancel_futures=True)
        raise HukouError(
            "a process writing the area workbooks died (killed, or out of memory): no area"
            " workbook was kept, and a set written earlier is as it was"
        ) from None
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # no area starts after a failure
        raise
    pool.shutdown(wait=True)


def _write_area(job: _AreaJob, engine: Engine | None = None) -> AreaWorkbook:
    """One area's workbook, from the history table: in a worker process (its own engine), or in
    this one."""
    from .cutover import load_run_result
    from .db import parse_url

    own = engine is None
    if engine is None:
        logging.getLogger("sqlalchemy").addHandler(logging.NullHandler())
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
            reading = engine

            def build(wb: Any) -> int:
                summary = summary_table(wb, page, banner, "006100", job.unmasked)
                rows = write_detail_rows(
                    reading,
                    wb,
                    page,
                    Places.of(reading),
                    result,
                    job.unmasked,
                    {},
                    no_progress,
                    divisions=job.divisions,
                )
                if rows != job.records:
                    raise RegisterStateError(
                        f"area {job.area}: {rows} detail rows written, the history holds"
                        f" {job.records}; no area workbook was kept"
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
        if own:
            engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return AreaWorkbook(job.area, job.name, saved.path, saved.sha256, rows, round(peak, 1))
