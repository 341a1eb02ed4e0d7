"""Verify a run independently of its own counters.

Everything is re-derived from the register and the history table and compared with the census the run
took before its first write: every in-scope record converted or accounted for, history rows = converted
records, per-nature counts equal to the census. Discrepancies name record keys, never ID numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Engine, Row, and_, case, func, or_, select
from sqlalchemy.orm import aliased

from . import schema
from .census import in_scope, is_active, take_census
from .codes import Action
from .db import translate_errors
from .holds import current_holds, held_by_hold_rows, not_held
from .profiles import Profile
from .register import RegisterMap
from .runs import find_run, load_census, run_register, run_table

H = schema.history
RUNS = schema.runs


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyResult:
    run_id: str
    profile: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def discrepancies(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]


def verify_run(engine: Engine, run_id: str | None = None) -> VerifyResult:
    """Re-derive a run's result; ``result.ok`` tells whether every check holds."""
    run = find_run(engine, run_id)
    run_id = str(run.run_id)
    reg = run_register(engine, run)
    R, hk = reg.table, reg.ours(H)
    census = load_census(engine, run_id)
    codes = census.codes
    scope = str(run.scope).split(",")
    result = VerifyResult(run_id, str(run.profile))
    add = result.checks.append
    if run.status in ("reverted", "rolling_back"):
        _verify_reverted(engine, reg, run, result)
        return result

    add(
        Check(
            "run finished",
            run.status == "completed",
            f"status {run.status}" + ("" if run.status == "completed" else ": resume it first"),
        )
    )
    active_statuses = str(run.active_statuses).split(",")
    profile = Profile(
        name=str(run.profile),
        display_name="",
        policy_document="",
        scope=tuple(scope),
        codes=codes,
        active_statuses=tuple(active_statuses),
    )
    with translate_errors(), engine.connect() as conn:
        # records held back for review are part of the census but not converted (yet)
        held = current_holds(conn, reg, run_id)
        # by the nature and 户别 the census counted them under, not as the register is now
        held_by = held_by_hold_rows(conn, run_id)
        held_count = sum(held_by.values())
        expected = census.to_convert_by() - held_by
        to_convert = census.to_convert - held_count
        live = H.c.reverted_at.is_(None)
        history_by: Counter[tuple[str, str | None]] = Counter()
        for nature, category, n in conn.execute(
            select(H.c.original_nature, H.c.household_category, func.count())
            .where(H.c.run_id == run_id, live)
            .group_by(H.c.original_nature, H.c.household_category)
        ):
            history_by[(nature, category)] = int(n)
        history_total = sum(history_by.values())
        expected_str = Counter(
            {(n.value, c.value if c else None): v for (n, c), v in expected.items()}
        )
        held_note = f" ({held_count} held back for review)" if held else ""
        add(
            Check(
                "history rows = census to convert",
                history_total == to_convert,
                f"{history_total} history rows, census counted {to_convert} to convert{held_note}",
            )
        )
        diff = {
            k: (history_by.get(k, 0), expected_str.get(k, 0))
            for k in set(history_by) | set(expected_str)
            if history_by.get(k, 0) != expected_str.get(k, 0)
        }
        add(
            Check(
                "per-nature counts = census",
                not diff,
                "all match"
                if not diff
                else "; ".join(
                    f"{n}/{c or '?'}: history {h}, census {e}" for (n, c), (h, e) in diff.items()
                ),
            )
        )
        converted_records = conn.execute(
            select(func.count())
            .select_from(R)
            .where(R.c.record_id.in_(select(hk).where(H.c.run_id == run_id, live)))
        ).scalar_one()
        add(
            Check(
                "history rows = converted records",
                converted_records == history_total and history_total == int(run.converted or 0),
                f"{history_total} history rows, {converted_records} register records behind them,"
                f" run counted {run.converted}",
            )
        )
        twice = (
            conn.execute(
                select(hk)
                .where(H.c.run_id == run_id, live)
                .group_by(hk)
                .having(func.count() > 1)
                .limit(10)
            )
            .scalars()
            .all()
        )
        add(
            Check(
                "one history row per record",
                not twice,
                f"records converted twice: {list(twice)}" if twice else "none converted twice",
            )
        )
        not_resident = (
            conn.execute(
                select(R.c.record_id)
                .join(H, and_(hk == R.c.record_id, H.c.run_id == run_id, live))
                .where(
                    or_(
                        R.c.hukou_type.is_(None),
                        R.c.hukou_type != reg.resident_code(H.c.household_category),
                    )
                )
                .limit(10)
            )
            .scalars()
            .all()
        )
        add(
            Check(
                "converted records are 居民户口",  # in the register's own code
                not not_resident,
                f"records with history but another type now: {list(not_resident)}"
                if not_resident
                else "all are",
            )
        )
        convert_codes = [e.raw for e in codes.entries() if e.action is Action.CONVERT]
        left = conn.execute(
            select(R.c.hukou_type, func.count())
            .where(
                in_scope(R, scope),
                is_active(R, active_statuses),
                R.c.hukou_type.in_(convert_codes),
                not_held(reg, run_id),
            )
            .group_by(R.c.hukou_type)
        ).all()
        add(
            Check(
                "no legacy type left in scope",
                not left,
                "none left"
                if not left
                else "still legacy: " + ", ".join(f"{code!r}: {n}" for code, n in left),
            )
        )
        # The register now: in scope, everything the census saw is still accounted for. Records
        # dropped from a hold were resolved by changing them (cancelled, made resident…).
        HOLDS = schema.run_holds
        dropped = select(reg.ours(HOLDS)).where(
            HOLDS.c.run_id == run_id, HOLDS.c.state == "dropped"
        )
        resident_codes = [e.raw for e in codes.entries() if e.action is Action.RESIDENT]
        scoped_now = and_(in_scope(R, scope), is_active(R, active_statuses))
        n_dropped, dropped_active, dropped_resident = conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((scoped_now, 1), else_=0)), 0),
                func.coalesce(
                    func.sum(
                        case((and_(scoped_now, R.c.hukou_type.in_(resident_codes)), 1), else_=0)
                    ),
                    0,
                ),
            ).where(R.c.record_id.in_(dropped))
        ).one()
        now_census = take_census(conn, reg, profile)
    accounted = census.to_convert + census.already_resident + census.not_permanent
    add(
        Check(
            "census accounts for every in-scope record",
            accounted == census.in_scope_active,
            f"{census.in_scope_active} in scope and active = {census.to_convert} to convert +"
            f" {census.already_resident} already resident + {census.not_permanent} not in the"
            f" permanent register (unmapped: {census.in_scope_active - accounted})",
        )
    )
    expected_resident = census.already_resident + to_convert + int(dropped_resident)
    expected_active = census.in_scope_active - (int(n_dropped) - int(dropped_active))
    add(
        Check(
            "register now = census after conversion",
            now_census.in_scope_active == expected_active
            and now_census.already_resident == expected_resident
            and now_census.total == census.total,
            f"now {now_census.total} records, {now_census.in_scope_active} in scope and active,"
            f" {now_census.already_resident} resident; expected {census.total},"
            f" {expected_active}, {expected_resident}",
        )
    )
    return result


def _verify_reverted(engine: Engine, reg: RegisterMap, run: Row[Any], result: VerifyResult) -> None:
    """A rolled-back run: every history row reverted (or its record skipped as changed since the
    cutover), and every reverted record back to its original code and 户别."""
    R, hk = reg.table, reg.ours(H)
    add = result.checks.append
    run_id = str(run.run_id)
    add(
        Check(
            "rollback finished",
            run.status == "reverted",
            f"status {run.status}" + ("" if run.status == "reverted" else ": finish the rollback"),
        )
    )
    later = aliased(H)
    with engine.connect() as conn:
        same_register = [
            r.run_id for r in conn.execute(select(RUNS)) if run_table(r) == run_table(run)
        ]
    reconverted = (
        select(later.c.history_id)
        .where(
            reg.ours(later) == R.c.record_id,
            later.c.run_id != run_id,
            # a run on the same register: a key means nothing in another one
            later.c.run_id.in_(same_register),
            later.c.reverted_at.is_(None),
        )
        .exists()
    )
    # the code before the run: before an application the run applied, else the history's
    A = schema.applications
    before_run = func.coalesce(
        select(func.max(A.c.outcome_from_code))
        .where(
            A.c.outcome_run_id == run_id,
            A.c.outcome == "APPLIED",
            A.c.outcome_to_code.is_not(None),
            reg.ours(A, "outcome_record") == hk,
        )
        .scalar_subquery(),
        H.c.original_code,
    )
    with translate_errors(), engine.connect() as conn:
        reverted = conn.execute(
            select(func.count())
            .select_from(H)
            .where(H.c.run_id == run_id, H.c.reverted_at.is_not(None))
        ).scalar_one()
        live = conn.execute(
            select(func.count())
            .select_from(H)
            .where(H.c.run_id == run_id, H.c.reverted_at.is_(None))
        ).scalar_one()
        not_restored = (
            conn.execute(
                select(R.c.record_id)
                .join(H, hk == R.c.record_id)
                .where(
                    H.c.run_id == run_id,
                    H.c.reverted_at.is_not(None),
                    ~reconverted,  # a later run converted it again: that run's verify covers it
                    or_(
                        R.c.hukou_type != before_run,
                        and_(R.c.hukou_type.is_(None), H.c.original_code.is_not(None)),
                        *_category_not_restored(reg),
                    ),
                )
                .limit(10)
            )
            .scalars()
            .all()
        )
    skipped = int(run.rollback_skipped or 0)
    add(
        Check(
            "history rows reverted",
            live == skipped,
            f"{reverted} reverted, {live} still live, {skipped} skipped as changed since the cutover",
        )
    )
    add(
        Check(
            "history rows = converted records",
            reverted + live == int(run.converted or reverted + live),
            f"{reverted + live} history rows, run converted {run.converted}",
        )
    )
    add(
        Check(
            "reverted records hold their original code and 户别",
            not not_restored,
            "all do" if not not_restored else f"records not restored: {list(not_restored)}",
        )
    )


def _category_not_restored(reg: RegisterMap) -> list[ColumnElement[bool]]:
    if not reg.writes_category:
        return []  # the run wrote the code alone
    R = reg.table
    return [
        R.c.household_category != H.c.original_category_label,
        and_(R.c.household_category.is_(None), H.c.original_category_label.is_not(None)),
        and_(R.c.household_category.is_not(None), H.c.original_category_label.is_(None)),
    ]
