"""In-flight 农转非 / 非转农 business at the cutoff, and records changed during the freeze (停办).

Rule (issue 4): approved before the cutoff → applied first, so the history records the type as of the
cutoff, with the application id on the history row; not approved by the cutoff → terminated
(停止办理); applied for at or after the cutoff → rejected; a person not in the register, or out of
scope, is listed and never applied. The decision is a pure function of the register and the
applications table, so the rehearsal predicts it exactly; the real run stores each outcome on the
application row, in the transaction that records the run, so no application is applied twice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    ScalarSelect,
    and_,
    exists,
    func,
    or_,
    select,
    update,
)

from . import schema
from .census import Census, CensusLine, in_scope, is_active
from .codes import Action, CodeTable, Nature
from .findings import Finding
from .instants import format_instant, now
from .profiles import Profile
from .register import RecordKey, RegisterMap

A = schema.applications


class Outcome(StrEnum):
    APPLIED = "APPLIED"  # approved before the cutoff: applied before the conversion
    TERMINATED = "TERMINATED"  # not approved by the cutoff: 停止办理
    REJECTED = "REJECTED"  # applied for at or after the cutoff
    ALREADY_REJECTED = "ALREADY_REJECTED"  # 已驳回 before the cutoff: nothing to do
    NOT_IN_REGISTER = "NOT_IN_REGISTER"
    OUT_OF_SCOPE = "OUT_OF_SCOPE"  # out of scope or not an active record
    NOT_APPLICABLE = "NOT_APPLICABLE"  # approved, but the record's type is not one it converts from


# 农转非 moves agricultural codes to the non-agricultural code of the same form and 户别; 非转农 the
# reverse. A record whose code is in neither column is listed, never guessed.
_NZF: dict[str, str] = {
    "2": "1",
    "4": "3",
    "农业": "非农业",
    "农业户口": "非农业户口",
    "农业家庭户口": "非农业家庭户口",
    "农业集体户口": "非农业集体户口",
}
_MOVES: dict[str, dict[str, str]] = {"农转非": _NZF, "非转农": {v: k for k, v in _NZF.items()}}
_TARGET: dict[str, Nature] = {"农转非": Nature.NON_AGRICULTURAL, "非转农": Nature.AGRICULTURAL}

_EXPLAIN: dict[Outcome, tuple[str, str, str]] = {
    # outcome: (severity, explanation, action)
    Outcome.APPLIED: (
        "warning",
        "截止时点前已批准的{kind}业务",
        "先行办结，历史表按截止时点类型记载并注明业务编号",
    ),
    Outcome.TERMINATED: ("warning", "截止时点未批准的{kind}业务", "停止办理"),
    Outcome.REJECTED: ("warning", "截止时点及以后申请的{kind}业务", "不予受理"),
    Outcome.ALREADY_REJECTED: ("warning", "截止时点前已驳回的{kind}业务", "无需处理"),
    Outcome.NOT_IN_REGISTER: ("error", "{kind}业务的申请人不在户籍登记中", "不予办理，待核实"),
    Outcome.OUT_OF_SCOPE: ("error", "{kind}业务的申请人不在本次范围内或非在册", "不予办理，待核实"),
    Outcome.NOT_APPLICABLE: (
        "error",
        "已批准的{kind}业务与申请人现登记类型不符",
        "未办理，待人工核实",
    ),
}


@dataclass(frozen=True)
class Decision:
    application_id: str
    id_number: str | None
    kind: str
    outcome: Outcome
    record_id: RecordKey | None = None
    name: str | None = None
    from_code: str | None = None  # the register code before, when applied
    to_code: str | None = None  # the register code written, when applied (None: already there)
    category_label: str | None = None
    note: str = ""
    stored: bool = False  # decided and stored by an earlier run

    def finding(self) -> Finding:
        severity, explanation, action = _EXPLAIN[self.outcome]
        text = f"{explanation.format(kind=self.kind)}（业务编号 {self.application_id}）"
        if self.note:
            text += f"：{self.note}"
        return Finding(
            code=f"APPLICATION_{self.outcome.value}",
            category="在办业务",
            severity=severity,
            record_id=self.record_id,
            id_number=self.id_number,
            name=self.name,
            explanation=text,
            action=action,
        )


def decide(
    conn: Connection, register: RegisterMap, profile: Profile, codes: CodeTable, cutoff: datetime
) -> list[Decision]:
    """What the cutover does with each application (stored outcomes are reported as stored)."""
    R = register.table
    if not conn.dialect.has_table(conn, A.name):
        return []
    apps = conn.execute(select(A).order_by(A.c.application_id)).all()
    if not apps:
        return []
    numbers = sorted({a.id_number for a in apps if a.id_number})
    records: dict[str, list[tuple[RecordKey, str | None, str | None, str | None, bool]]] = (
        defaultdict(list)
    )
    scoped = and_(in_scope(R, profile.scope), is_active(R, profile.active_statuses))
    for start in range(0, len(numbers), 500):
        for row in conn.execute(
            select(
                R.c.id_number,
                R.c.record_id,
                register.column("name"),
                R.c.hukou_type,
                register.column("household_category"),
                scoped.label("scoped"),
            ).where(R.c.id_number.in_(numbers[start : start + 500]))
        ):
            records[row.id_number].append(
                (
                    register.key_of(row.record_id),
                    row.name,
                    row.hukou_type,
                    row.household_category,
                    bool(row.scoped),
                )
            )
    out: list[Decision] = []
    for app in apps:
        if app.outcome is not None and app.outcome_reverted_at is None:
            out.append(_stored(app, records.get(app.id_number or "", []), register))
            continue
        out.append(_decide_one(app, records.get(app.id_number or "", []), codes, cutoff))
    return out


def _stored(
    app: Row[Any],
    found: list[tuple[RecordKey, str | None, str | None, str | None, bool]],
    register: RegisterMap,
) -> Decision:
    stored_key = app.outcome_record_id if register.key_is_integer else app.outcome_record_key
    name = next((n for rid, n, *_ in found if rid == stored_key), None)
    return Decision(
        application_id=str(app.application_id),
        id_number=app.id_number,
        kind=str(app.kind),
        outcome=Outcome(app.outcome),
        record_id=stored_key,
        name=name,
        from_code=app.outcome_from_code,
        to_code=app.outcome_to_code,
        note=f"已由运行 {app.outcome_run_id} 处理",
        stored=True,
    )


def _decide_one(
    app: Row[Any],
    found: list[tuple[RecordKey, str | None, str | None, str | None, bool]],
    codes: CodeTable,
    cutoff: datetime,
) -> Decision:
    application_id = str(app.application_id)
    number = app.id_number
    kind = str(app.kind)
    applied_at: datetime = app.applied_at
    status = str(app.status)
    approved_at: datetime | None = app.approved_at

    def decision(outcome: Outcome, note: str = "", **more: Any) -> Decision:
        return Decision(application_id, number, kind, outcome, note=note, **more)

    if not found:
        return decision(Outcome.NOT_IN_REGISTER)
    scoped = [f for f in found if f[4]]
    if not scoped:
        return decision(Outcome.OUT_OF_SCOPE, record_id=found[0][0], name=found[0][1])
    if len(scoped) > 1:
        return decision(
            Outcome.NOT_APPLICABLE,
            f"公民身份号码对应 {len(scoped)} 条在册记录，无法确定办理对象",
            record_id=scoped[0][0],
            name=scoped[0][1],
        )
    record_id, name, code, label, _ = scoped[0]
    who: dict[str, Any] = {"record_id": record_id, "name": name, "category_label": label}
    if applied_at >= cutoff:
        return decision(Outcome.REJECTED, f"申请时间 {format_instant(applied_at)}", **who)
    if status == "已驳回":
        return decision(Outcome.ALREADY_REJECTED, **who)
    if status != "已批准" or approved_at is None or approved_at >= cutoff:
        when = f"，批准时间 {format_instant(approved_at)}" if approved_at else ""
        return decision(Outcome.TERMINATED, f"审批状态 {status}{when}", **who)
    entry = codes.get(code)
    if entry is not None and entry.action is Action.CONVERT and entry.nature is _TARGET[kind]:
        return decision(
            Outcome.APPLIED, "登记已是办结后的类型", from_code=code, to_code=None, **who
        )
    target = _MOVES[kind].get(code or "")
    if target is None or codes.get(target) is None:
        return decision(Outcome.NOT_APPLICABLE, f"现登记户口性质 {code!r}", **who)
    return decision(Outcome.APPLIED, from_code=code, to_code=target, **who)


def moved_census(census: Census, decisions: list[Decision]) -> Census:
    """The census as of the cutoff: with the approved applications applied."""
    counts: dict[tuple[bool, bool, str | None, str | None], int] = defaultdict(int)
    for line in census.lines:
        counts[(line.in_scope, line.active, line.raw_code, line.category_label)] += line.records
    for d in decisions:
        if d.outcome is Outcome.APPLIED and d.to_code is not None and not d.stored:
            counts[(True, True, d.from_code, d.category_label)] -= 1
            counts[(True, True, d.to_code, d.category_label)] += 1
    lines = [CensusLine(k[0], k[1], k[2], k[3], n) for k, n in counts.items() if n > 0]
    lines.sort(
        key=lambda x: (not x.in_scope, not x.active, x.raw_code or "", x.category_label or "")
    )
    return Census(lines, census.codes, needs_category=census.needs_category)


def apply_decisions(
    conn: Connection, register: RegisterMap, run_id: str, decisions: list[Decision]
) -> list[Decision]:
    """Store every new outcome and apply approved applications to the register (inside the run's
    first transaction). Returns the decisions that changed a record's type."""
    R = register.table
    changed: list[Decision] = []
    for d in decisions:
        # Only a decision about a person this run is responsible for is final. Someone not in the
        # register, or in another scope, is reported; another run (another profile, or a later
        # import) decides again.
        if d.stored or d.outcome in (Outcome.NOT_IN_REGISTER, Outcome.OUT_OF_SCOPE):
            continue
        if d.outcome is Outcome.APPLIED and d.to_code is not None and d.record_id is not None:
            result = conn.execute(
                update(R)
                .where(R.c.record_id == d.record_id, R.c.hukou_type == d.from_code)
                .values(hukou_type=d.to_code)
            )
            if result.rowcount:
                changed.append(d)
        conn.execute(
            update(A)
            .where(
                A.c.application_id == d.application_id,
                or_(A.c.outcome.is_(None), A.c.outcome_reverted_at.is_not(None)),
            )
            .values(
                outcome_reverted_at=None,
                outcome=d.outcome.value,
                outcome_run_id=run_id,
                outcome_record_id=d.record_id if register.key_is_integer else None,
                outcome_record_key=None if register.key_is_integer else d.record_id,
                outcome_from_code=d.from_code,
                outcome_to_code=d.to_code,
            )
        )
    return changed


def undo_applied(
    conn: Connection,
    register: RegisterMap,
    run_id: str,
    restored_records: ColumnElement[bool],
) -> None:
    """Rollback: a record an approved application changed before the run converted it goes back to
    the code it had before the application (the history holds the code as of the cutoff)."""
    R = register.table
    applied = and_(
        A.c.outcome_run_id == run_id,
        A.c.outcome == Outcome.APPLIED.value,
        A.c.outcome_to_code.is_not(None),
        register.ours(A, "outcome_record") == R.c.record_id,
    )
    conn.execute(
        update(R)
        .where(restored_records, exists(select(A.c.application_id).where(applied)))
        .values(hukou_type=select(func.max(A.c.outcome_from_code)).where(applied).scalar_subquery())
    )


def reopen_decisions(conn: Connection, run_id: str, kept_records: ColumnElement[bool]) -> None:
    """Rollback: the run's decisions no longer hold, except an application applied to a record the
    rollback left converted (``kept_records``, changed since the cutover)."""
    conn.execute(
        update(A)
        .where(
            A.c.outcome_run_id == run_id,
            A.c.outcome_reverted_at.is_(None),
            ~and_(A.c.outcome == Outcome.APPLIED.value, kept_records),
        )
        .values(outcome_reverted_at=now())
    )


def applied_application(register: RegisterMap, run_id: str) -> ScalarSelect[Any]:
    """Correlated subquery: the application applied to a register record by this run, if any."""
    R = register.table
    return (
        select(func.max(A.c.application_id))
        .where(
            A.c.outcome_run_id == run_id,
            A.c.outcome == Outcome.APPLIED.value,
            register.ours(A, "outcome_record") == R.c.record_id,
        )
        .scalar_subquery()
    )


def late_changes(conn: Connection, register: RegisterMap, profile: Profile) -> list[Finding]:
    """Records in scope changed at or after the freeze start (停办): listed for review."""
    if profile.freeze_start is None or not register.has("updated_at"):
        return []
    R = register.table
    rows = conn.execute(
        select(R.c.record_id, R.c.id_number, register.column("name"), R.c.updated_at)
        .where(in_scope(R, profile.scope), R.c.updated_at >= profile.freeze_start)
        .order_by(R.c.record_id)
    ).all()
    since = format_instant(profile.freeze_start)
    return [
        Finding(
            code="LATE_CHANGE",
            category="停办期变更",
            severity="warning",
            record_id=register.key_of(r.record_id),
            id_number=r.id_number,
            name=r.name,
            explanation=f"停办（{since} 起）期间记录有变更，变更时间 {format_instant(r.updated_at)}",
            action="照常转换，列入复核",
        )
        for r in rows
    ]
