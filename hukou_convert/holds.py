"""Records held back for manual review (a profile's ``hold_back`` exception codes).

By default an exception is reported and the record converted: the reform applies to everyone. A
profile may instead hold back the records of some exception codes. The real run then leaves them
unconverted and lists them in ``hukou_run_holds`` (state ``held``), so that none is forgotten; once
the exception is resolved in the register, running the same cutover command again converts them
within the same run (state ``released``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace

from sqlalchemy import ColumnElement, Connection, and_, exists, func, insert, select

from . import schema
from .census import derive_category, in_scope, is_active
from .codes import Action, Category, CodeTable, Nature
from .findings import Finding
from .profiles import Profile
from .register import RecordKey, RegisterMap

HOLDS = schema.run_holds

HELD_ACTION = "暂缓转换（保留原类型），待人工核查；问题解决后重新执行同一转换命令即予转换"


def held_records(
    findings: Iterable[Finding], hold_back: Iterable[str]
) -> dict[RecordKey, list[str]]:
    """Record key -> the hold-back codes found on it."""
    codes = set(hold_back)
    out: dict[RecordKey, list[str]] = defaultdict(list)
    for f in findings:
        if f.code in codes and f.record_id is not None and f.code not in out[f.record_id]:
            out[f.record_id].append(f.code)
    return dict(out)


def with_hold_actions(findings: list[Finding], hold_back: Iterable[str]) -> list[Finding]:
    """The findings, the held ones saying what is done with them."""
    codes = set(hold_back)
    if not codes:
        return findings
    return [replace(f, action=HELD_ACTION) if f.code in codes else f for f in findings]


def convertible(
    conn: Connection,
    register: RegisterMap,
    profile: Profile,
    codes: CodeTable,
    keys: Iterable[RecordKey],
    moves: Mapping[RecordKey, str] | None = None,
) -> dict[RecordKey, tuple[Nature, Category | None]]:
    """Of these records, those the run would convert now, with their nature and 户别. ``moves``:
    register codes an approved application changes first (record key -> new code)."""
    R = register.table
    out: dict[RecordKey, tuple[Nature, Category | None]] = {}
    ordered = register.sorted_keys(keys)
    scoped = and_(in_scope(R, profile.scope), is_active(R, profile.active_statuses))
    for start in range(0, len(ordered), 500):
        rows = conn.execute(
            select(R.c.record_id, R.c.hukou_type, register.column("household_category")).where(
                R.c.record_id.in_(ordered[start : start + 500]), scoped
            )
        )
        for record_id, raw, label in rows:
            raw = (moves or {}).get(register.key_of(record_id), raw)
            entry = codes.get(raw)
            if entry is None or entry.action is not Action.CONVERT or entry.nature is None:
                continue
            out[register.key_of(record_id)] = (entry.nature, derive_category(codes, raw, label))
    return out


def held_breakdown(
    conn: Connection,
    register: RegisterMap,
    profile: Profile,
    codes: CodeTable,
    held: Mapping[RecordKey, list[str]],
    moves: Mapping[RecordKey, str] | None = None,
) -> tuple[dict[RecordKey, list[str]], Counter[tuple[Nature, Category | None]]]:
    """Of the flagged records, those the run would otherwise convert (only these are held), and
    their count by nature and 户别."""
    found = convertible(conn, register, profile, codes, held, moves)
    return {k: held[k] for k in found}, Counter(found.values())


def store_holds(
    conn: Connection,
    register: RegisterMap,
    run_id: str,
    held: Mapping[RecordKey, list[str]],
    profile: Profile,
    codes: CodeTable,
) -> None:
    """The held records with the nature and 户别 the census counted them under (after approved
    applications were applied): verify subtracts them by these, not by the register as it is
    later."""
    natures = convertible(conn, register, profile, codes, held)
    rows = []
    for key, found in held.items():
        nature, category = natures.get(key, (None, None))
        rows.append(
            {
                "run_id": run_id,
                register.ours(HOLDS).key: key,
                "codes": ",".join(found)[:400],
                "state": "held",
                "nature": nature.value if nature else None,
                "category": category.value if category else None,
            }
        )
    for start in range(0, len(rows), 5_000):
        conn.execute(insert(HOLDS), rows[start : start + 5_000])


def held_by_hold_rows(conn: Connection, run_id: str) -> Counter[tuple[Nature, Category | None]]:
    """What the run did not convert by design: held records and those dropped from the hold (no
    longer to convert when released), by the nature and 户别 recorded when they were held."""
    out: Counter[tuple[Nature, Category | None]] = Counter()
    for nature, category, n in conn.execute(
        select(HOLDS.c.nature, HOLDS.c.category, func.count())
        .where(HOLDS.c.run_id == run_id, HOLDS.c.state.in_(("held", "dropped")))
        .group_by(HOLDS.c.nature, HOLDS.c.category)
    ):
        if nature is not None:
            out[(Nature(nature), Category(category) if category else None)] += int(n)
    return out


def not_held(register: RegisterMap, run_id: str) -> ColumnElement[bool]:
    """Records the run converts: those it does not hold."""
    return ~exists(
        select(HOLDS.c.hold_id).where(
            HOLDS.c.run_id == run_id,
            register.ours(HOLDS) == register.key_column,
            HOLDS.c.state == "held",
        )
    )


def current_holds(
    conn: Connection, register: RegisterMap, run_id: str
) -> dict[RecordKey, list[str]]:
    rows = conn.execute(
        select(register.ours(HOLDS), HOLDS.c.codes).where(
            HOLDS.c.run_id == run_id, HOLDS.c.state == "held"
        )
    )
    return {register.key_of(k): str(v).split(",") for k, v in rows}
