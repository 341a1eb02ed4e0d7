"""Undo a cutover: restore every record of a run to its original code and 户别 from the history.

The history is never deleted: each restored record's history row gets ``reverted_at``, in the same
transaction as the restore and the batch's ledger row, so a rollback killed at any point resumes where
its last batch ended. A record changed after the cutover (its type, 户别 or division no longer what
the run left, or a later ``updated_at``) is not overwritten: the rollback refuses and lists them,
unless told to skip them (their history rows then stay live, and say so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    case,
    collate,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)

from . import schema
from .codes import CATEGORY_OF_LABEL
from .db import translate_errors
from .errors import Aborted, ChangedSinceCutoverError, RegisterStateError
from .inflight import reopen_decisions, undo_applied
from .instants import now
from .partitions import partitions_held
from .progress import Progress, no_progress
from .register import RecordKey, RegisterMap
from .runlock import live_run_lock
from .runs import describe_live_run, find_run, run_register

H = schema.history
RUNS = schema.runs
B = schema.rollback_batches
SHOWN_CHANGED = 50


@dataclass
class RollbackResult:
    run_id: str
    outcome: str  # reverted | resumed | already-reverted
    restored: int = 0
    skipped_changed: int = 0
    changed_records: list[RecordKey] = field(default_factory=list)  # keys, never ID numbers
    batches: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None


ConfirmRollback = Callable[[str, int], bool]


def changed_since_cutover(reg: RegisterMap, backend: str) -> ColumnElement[bool]:
    """A live history row of the run whose record is no longer what the run left."""
    R = reg.table
    division_now: ColumnElement[Any] = R.c.division_code
    if backend == "postgresql":
        # the history's division code is in "C" (schema.Code); a legacy table's may be in a
        # collation named on its column, and two such cannot be compared as they are
        division_now = collate(division_now, "C")
    changed = [
        R.c.hukou_type.is_(None),
        R.c.hukou_type != reg.resident_code(H.c.household_category),
        and_(H.c.division_code.is_not(None), R.c.division_code.is_(None)),
        division_now != H.c.division_code,
    ]
    if reg.has_category_column:
        category_now = case(
            {label: cat.value for label, cat in CATEGORY_OF_LABEL.items()},
            value=reg.column("household_category"),
        )
        changed += [
            and_(H.c.household_category.is_not(None), category_now.is_(None)),
            and_(H.c.household_category.is_not(None), category_now != H.c.household_category),
        ]
    if reg.has("updated_at"):
        changed.append(
            and_(R.c.updated_at.is_not(None), reg.changed_after(H.c.converted_at, backend))
        )
    return or_(*changed)


def rollback_run(
    engine: Engine,
    run_id: str,
    *,
    skip_changed: bool = False,
    batch_size: int = 50_000,
    confirm: ConfirmRollback | None = None,
    progress: Progress = no_progress,
) -> RollbackResult:
    """Restore a run's records; resumable; refuses on records changed since unless ``skip_changed``."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    with translate_errors():
        schema.ensure_schema(engine)
        with live_run_lock(engine, lambda note: describe_live_run(engine, note)):
            return _locked_rollback(engine, run_id, skip_changed, batch_size, confirm, progress)


def _locked_rollback(
    engine: Engine,
    run_id: str,
    skip_changed: bool,
    batch_size: int,
    confirm: ConfirmRollback | None,
    progress: Progress,
) -> RollbackResult:
    run = find_run(engine, run_id)
    reg = run_register(engine, run)
    # a first cutover killed before it built the history's indexes, rolled back instead of resumed
    schema.build_history_indexes(engine)
    R, hk = reg.table, reg.ours(H)
    backend = engine.dialect.name
    if run.status == "reverted":
        with engine.connect() as conn:
            restored = _count(conn, H.c.run_id == run_id, H.c.reverted_at.is_not(None))
            live = _count(conn, H.c.run_id == run_id, H.c.reverted_at.is_(None))
        return RollbackResult(run_id, "already-reverted", restored=restored, skipped_changed=live)
    outcome = "resumed" if run.status == "rolling_back" else "reverted"
    live_rows = H.c.run_id == run_id, H.c.reverted_at.is_(None)
    with engine.connect() as conn:
        changed = (
            conn.execute(
                select(hk)
                .join(R, R.c.record_id == hk, isouter=True)
                .where(
                    *live_rows,
                    or_(R.c.record_id.is_(None), changed_since_cutover(reg, backend)),
                )
                .order_by(hk)
            )
            .scalars()
            .all()
        )
        to_restore = _count(conn, *live_rows) - len(changed)
    if changed and not skip_changed:
        raise ChangedSinceCutoverError(run_id, [reg.key_of(r) for r in changed], SHOWN_CHANGED)
    if confirm is not None and not confirm(run_id, to_restore):
        raise Aborted("not confirmed: nothing was restored")
    started = now()
    if run.status != "rolling_back":
        with engine.begin() as conn:
            moved = conn.execute(
                update(RUNS)
                .where(RUNS.c.run_id == run_id, RUNS.c.status.in_(("completed", "running")))
                .values(status="rolling_back")
            ).rowcount
            if moved != 1:
                raise RegisterStateError(
                    f"run {run_id} cannot be rolled back (status {run.status})"
                )
    # a worker of a run split into partitions (a 'join' of a run whose own process died) may
    # still be converting one: wait for it, and let no worker claim another while restoring
    with partitions_held(engine, run_id):
        batches, restored = _restore_batches(engine, reg, run_id, batch_size, to_restore, progress)
        total = _finish_rollback(engine, reg, run_id, len(changed))
    return RollbackResult(
        run_id,
        outcome,
        restored=total,
        skipped_changed=len(changed),
        changed_records=[reg.key_of(r) for r in changed[:SHOWN_CHANGED]],
        batches=batches,
        started_at=started,
        finished_at=now(),
    )


def _finish_rollback(engine: Engine, reg: RegisterMap, run_id: str, skipped: int) -> int:
    """The decisions the run applied reopened, the run marked reverted; returns the records
    restored over every attempt."""
    hk = reg.ours(H)
    with engine.begin() as conn:
        total = conn.execute(
            select(func.coalesce(func.sum(B.c.restored), 0)).where(B.c.run_id == run_id)
        ).scalar_one()
        reopen_decisions(
            conn,
            run_id,
            exists(
                select(H.c.history_id).where(
                    H.c.run_id == run_id,
                    H.c.reverted_at.is_(None),
                    hk == reg.ours(schema.applications, "outcome_record"),
                )
            ),
        )
        conn.execute(
            update(RUNS)
            .where(RUNS.c.run_id == run_id)
            .values(status="reverted", reverted_at=now(), rollback_skipped=skipped)
        )
    return int(total)


def _count(conn: Connection, *where: ColumnElement[bool]) -> int:
    return int(conn.execute(select(func.count()).select_from(H).where(*where)).scalar_one())


def _restore_batches(
    engine: Engine, reg: RegisterMap, run_id: str, batch_size: int, total: int, progress: Progress
) -> tuple[int, int]:
    R, hk = reg.table, reg.ours(H)
    changed = changed_since_cutover(reg, engine.dialect.name)
    restore: dict[Any, Any] = {R.c.hukou_type: H.c.original_code, **reg.keep_change_time()}
    if reg.writes_category:
        restore[R.c.household_category] = H.c.original_category_label
    key = H.c.history_id
    batches = restored_total = 0
    with engine.connect() as conn:
        batch_no = conn.execute(
            select(func.coalesce(func.max(B.c.batch_no), 0)).where(B.c.run_id == run_id)
        ).scalar_one()
    with progress("回退 rollback", total, "人") as advance:
        lo: int | None = None
        while True:
            with engine.begin() as conn:
                after = [H.c.run_id == run_id, H.c.reverted_at.is_(None)]
                if lo is not None:
                    after.append(key > lo)
                # live rows whose record is still as the run left it (changed ones are skipped)
                as_left = select(R.c.record_id).where(R.c.record_id == hk, not_(changed)).exists()
                hi = conn.execute(
                    select(key).where(*after).order_by(key).offset(batch_size - 1).limit(1)
                ).scalar()
                if hi is None:
                    hi = conn.execute(select(func.max(key)).where(*after)).scalar()
                    if hi is None:
                        break
                window = [*after, key <= hi]
                # A stamp of its own per batch: the register is restored from exactly the rows
                # this batch marks, after they are marked (the mark reads the record as converted).
                stamp = now() + timedelta(microseconds=batch_no + 1)
                marked = conn.execute(
                    update(H).where(*window, as_left).values(reverted_at=stamp)
                ).rowcount
                restored = conn.execute(
                    update(R)
                    .where(
                        R.c.record_id == hk,
                        H.c.run_id == run_id,
                        H.c.reverted_at == stamp,
                        key > (lo if lo is not None else -1),
                        key <= hi,
                    )
                    .values(restore)
                ).rowcount
                undo_applied(
                    conn,
                    reg,
                    run_id,
                    R.c.record_id.in_(
                        select(hk).where(H.c.run_id == run_id, H.c.reverted_at == stamp)
                    ),
                )
                if restored != marked:
                    raise RegisterStateError(
                        f"rollback batch {batch_no + 1}: {marked} history rows marked but"
                        f" {restored} records restored; batch rolled back"
                    )
                batch_no += 1
                conn.execute(
                    insert(B).values(
                        run_id=run_id,
                        batch_no=batch_no,
                        last_key=str(hi),
                        restored=restored,
                        committed_at=now(),
                    )
                )
            advance(restored)
            restored_total += restored
            lo = int(hi)
            batches += 1
    return batches, restored_total
