"""The set-based conversion: per batch of keys, one ``INSERT … SELECT`` into the history, one
``UPDATE`` of the register and the batch's ledger row, in one transaction. No Python per record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    null,
    select,
    true,
    update,
)

from . import schema
from .census import in_scope, is_active
from .codes import (
    CATEGORY_LABELS,
    CATEGORY_OF_LABEL,
    NEW_TYPE,
    Action,
    CodeTable,
)
from .errors import (
    RegisterStateError,
)
from .holds import (
    not_held,
)
from .inflight import (
    Outcome,
    applied_application,
)
from .instants import now
from .profiles import Profile, ResolvedCutoff
from .progress import Advance
from .register import RecordKey, RegisterMap

H = schema.history


def conversion_expressions(
    codes: CodeTable, register: RegisterMap
) -> tuple[list[str], ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]:
    """(codes to convert, nature, history category, register 户别 label) as SQL over the register."""
    R = register.table
    category_column = register.column("household_category")
    convert = [e for e in codes.entries() if e.action is Action.CONVERT and e.nature is not None]
    raws = [e.raw for e in convert]
    # a table that converts nothing has no CASE to write (an empty CASE is a syntax error)
    nature: ColumnElement[Any] = (
        case({e.raw: e.nature.value for e in convert if e.nature}, value=R.c.hukou_type)
        if convert
        else null()
    )
    with_category = [e for e in convert if e.category is not None]
    from_label = case(
        {label: cat.value for label, cat in CATEGORY_OF_LABEL.items()}, value=category_column
    )
    if with_category:
        from_code = case(
            {e.raw: e.category.value for e in with_category if e.category},
            value=R.c.hukou_type,
        )
        label_from_code = case(
            {e.raw: CATEGORY_LABELS[e.category] for e in with_category if e.category},
            value=R.c.hukou_type,
        )
        category: ColumnElement[Any] = func.coalesce(from_code, from_label)
        new_label: ColumnElement[Any] = func.coalesce(label_from_code, category_column)
    else:
        category, new_label = from_label, category_column
    return raws, nature, category, new_label


@dataclass(frozen=True)
class RunConversion:
    """What a run converts with, as it recorded it: every batch of it, in any process."""

    run_id: str
    codes: CodeTable
    profile: Profile
    cutoff: ResolvedCutoff
    batch_size: int
    register: RegisterMap


@dataclass(frozen=True)
class KeyRange:
    """The records a worker converts: keys after ``after`` up to ``upto`` (None: unbounded), the
    ledger rows of partition ``partition_no`` (0: a run not split into partitions)."""

    partition_no: int = 0
    after: str | None = None
    upto: str | None = None


WHOLE = KeyRange()


class CommitGate:
    """The run's first commit waits for the reading of the register as it was (its verdict):
    until ``sealable()``, the batches stay in the open transaction; then ``seal()`` completes
    that transaction's records (or raises, and the caller rolls it all back) and it commits.
    Every commit after that is a batch's own. What :meth:`when_open` was given is called once
    the first commit is made (the run's workers let go)."""

    def __init__(self, sealable: Callable[[], bool], seal: Callable[[], None]) -> None:
        self._sealable = sealable
        self._seal = seal
        self._on_open: list[Callable[[], None]] = []
        self.open = False

    def when_open(self, call: Callable[[], None]) -> None:
        """``call()`` once the first commit is made (now, if it is)."""
        if self.open:
            call()
        else:
            self._on_open.append(call)

    def commit(self, conn: Connection, force: bool = False) -> None:
        """Commit, or keep the transaction open while the verdict is not in (``force``: wait
        for it)."""
        if self.open:
            conn.commit()
            return
        if not force and not self._sealable():
            return
        self._seal()
        conn.commit()
        self.open = True
        for call in self._on_open:
            call()


def convert_batches(
    conn: Connection,
    run: RunConversion,
    part: KeyRange,
    advance: Advance,
    gate: CommitGate | None = None,
) -> int:
    """Convert the records of ``part`` on ``conn`` in batches of the run's size, each batch with
    its ledger row, from the partition's last committed batch on. Each batch commits (through
    ``gate`` when given: the run's first commit waits for its verdict). ``advance`` counts the
    records passed, those done before included. Returns the number of batches."""
    register = run.register
    R = register.table
    exprs = conversion_expressions(run.codes, register)
    key = register.key_column
    B = schema.run_batches
    holds, applies = _run_holds_and_applies(conn, run.run_id)
    scope_pred = conversion_predicate(register, run.run_id, exprs[0], run.profile, holds)
    last = last_batch(conn, run.run_id, part.partition_no)
    start = register.key_of(part.after) if part.after is not None else None
    lo: RecordKey | None = register.key_of(last.last_key) if last is not None else start
    batch_no = int(last.batch_no) if last is not None else 0
    upto = key <= register.key_of(part.upto) if part.upto is not None else true()
    if last is not None:  # the records of the batches done before
        before = register.key_range(part.after, last.last_key)
        advance(int(conn.execute(select(func.count()).select_from(R).where(before)).scalar_one()))
    batches = 0
    while True:
        after = key > lo if lo is not None else true()
        hi = conn.execute(
            select(key).where(after, upto).order_by(key).offset(run.batch_size - 1).limit(1)
        ).scalar()
        full = hi is not None
        if hi is None:
            hi = conn.execute(select(func.max(key)).where(after, upto)).scalar()
            if hi is None:
                break  # nothing after the last checkpoint: the range is done
        window = and_(after, key <= hi)
        updated = convert_window(
            conn, register, run.run_id, exprs, scope_pred, run.cutoff, window, batch_no + 1, applies
        )
        batch_no += 1
        conn.execute(
            insert(B).values(
                run_id=run.run_id,
                partition_no=part.partition_no,
                batch_no=batch_no,
                first_key=None if lo is None else str(lo),
                last_key=str(hi),
                converted=updated,
                committed_at=now(),
            )
        )
        # a full window holds exactly batch_size keys (hi is the batch_size-th key after
        # lo); only the last one is counted
        window_rows = (
            run.batch_size
            if full
            else conn.execute(select(func.count()).select_from(R).where(window)).scalar_one()
        )
        if gate is None:
            conn.commit()
        else:
            gate.commit(conn)
        advance(int(window_rows))
        lo = register.key_of(hi)
        batches += 1
    return batches


def last_batch(conn: Connection, run_id: str, partition_no: int = 0) -> Row[Any, Any] | None:
    """A partition's last committed batch (number and last key): where a resume continues."""
    B = schema.run_batches
    return conn.execute(
        select(B.c.batch_no, B.c.last_key)
        .where(B.c.run_id == run_id, B.c.partition_no == partition_no)
        .order_by(B.c.batch_no.desc())
        .limit(1)
    ).first()


def conversion_predicate(
    register: RegisterMap, run_id: str, raws: list[str], profile: Profile, holds: bool = True
) -> ColumnElement[bool]:
    """What the run converts: active records in scope with a code to convert, not held back.
    ``holds=False`` when the run holds no record: then no per-record look-up of the holds."""
    R = register.table
    scope = [in_scope(R, profile.scope), is_active(R, profile.active_statuses)]
    held = [not_held(register, run_id)] if holds else []
    return and_(*scope, R.c.hukou_type.in_(raws), *held)


def _run_holds_and_applies(conn: Connection, run_id: str) -> tuple[bool, bool]:
    """Whether the run holds any record back, and whether it applied any application: when not,
    the batches need not look either up per record (both are fixed before the first batch)."""
    holds = conn.execute(
        select(schema.run_holds.c.hold_id)
        .where(schema.run_holds.c.run_id == run_id, schema.run_holds.c.state == "held")
        .limit(1)
    ).first()
    A = schema.applications
    applied = conn.execute(
        select(A.c.application_id)
        .where(A.c.outcome_run_id == run_id, A.c.outcome == Outcome.APPLIED.value)
        .limit(1)
    ).first()
    return holds is not None, applied is not None


def convert_window(
    conn: Connection,
    register: RegisterMap,
    run_id: str,
    exprs: tuple[list[str], ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]],
    scope_pred: ColumnElement[bool],
    cutoff: ResolvedCutoff,
    window: ColumnElement[bool],
    batch_no: int,
    applies: bool = True,
) -> int:
    """One batch, set-based: the history rows (INSERT … SELECT), then the register (one UPDATE).
    ``applies=False`` when the run applied no application: no per-record look-up of one."""
    _raws, nature, category, new_label = exprs
    R = register.table
    effective = bindparam("effective_at", cutoff.instant, type_=schema.Instant())
    converted_at = bindparam("converted_at", now(), type_=schema.Instant())
    source = select(
        R.c.id_number,
        R.c.hukou_type,
        nature,
        category,
        literal(NEW_TYPE),
        effective,
        converted_at,
        literal(run_id),
        register.key_column,
        R.c.division_code,
        applied_application(register, run_id) if applies else null(),
        # 户别 exactly as it was in the register's own values (rollback restores it)
        R.c.household_category if register.has_category_column else null(),
    ).where(window, scope_pred)
    inserted = conn.execute(
        insert(H)
        .from_select(
            [
                "id_number",
                "original_code",
                "original_nature",
                "household_category",
                "new_type",
                "effective_at",
                "converted_at",
                "run_id",
                register.ours(H).key,
                "division_code",
                "application_id",
                "original_category_label",
            ],
            source,
        )
        .execution_options(preserve_rowcount=True)
    ).rowcount
    # MySQL evaluates single-table SET clauses left to right: 户别 first, while hukou_type still
    # holds the original code (the resident code of a combined-code register reads it too).
    new_values: list[tuple[Any, Any]] = [
        *register.keep_change_time().items(),
        (R.c.hukou_type, register.resident_code(category)),
    ]
    if register.writes_category:
        new_values.insert(0, (R.c.household_category, new_label))
    updated = conn.execute(update(R).where(window, scope_pred).ordered_values(*new_values)).rowcount
    # The two statements' own counts, compared: the history rows written and the records updated
    # (SQLAlchemy keeps an INSERT … SELECT's count when asked to: preserve_rowcount).
    if inserted != updated:
        raise RegisterStateError(
            f"batch {batch_no}: {inserted} history rows but {updated} records updated (the"
            " register changed under the run?); batch rolled back"
        )
    return int(updated)
