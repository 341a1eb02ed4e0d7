"""The cutover command as one call of the core: rehearse or run, then write the audit workbook.

The workbook is written after the run commits, from the history table: the register is back in
service while it is written. A rehearsal also writes its plan beside the workbook.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from .cutover import DEFAULT_BATCH_SIZE, CutoverResult, rehearse, run_cutover
from .profiles import Profile, ResolvedCutoff
from .progress import Progress, no_progress
from .register import BUILTIN_REGISTER, RegisterMap
from .run_start import Confirm
from .tallies import AreaLevel
from .workbook import WorkbookResult, write_run_workbook


@dataclass
class CutoverReport:
    result: CutoverResult
    workbook: WorkbookResult


def cutover_and_report(
    engine: Engine,
    profile: Profile,
    cutoff: ResolvedCutoff,
    *,
    rehearsal: bool,
    out_dir: Path,
    unmasked: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    confirm: Confirm | None = None,
    expect: Path | None = None,
    accept_changes: bool = False,
    max_exceptions: int | None = None,
    progress: Progress = no_progress,
    register: RegisterMap = BUILTIN_REGISTER,
    split_by: AreaLevel | None = None,
    processes: int = 1,
    workers: int = 1,
) -> CutoverReport:
    if rehearsal:
        result = rehearse(engine, profile, cutoff, progress, plan_dir=out_dir, register=register)
    else:
        result = run_cutover(
            engine,
            profile,
            cutoff,
            batch_size=batch_size,
            confirm=confirm,
            progress=progress,
            expect=expect,
            accept_changes=accept_changes,
            max_exceptions=max_exceptions,
            register=register,
            workers=workers,
        )
    workbook = write_run_workbook(
        engine,
        result,
        out_dir,
        unmasked=unmasked,
        progress=progress,
        split_by=split_by,
        processes=processes,
    )
    return CutoverReport(result, workbook)
