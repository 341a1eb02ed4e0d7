"""The census: what the register holds, by scope, status, raw code and 户别, in one grouped scan.

The rehearsal's counts and the cutover's census are the same function, so a rehearsal predicts the
real run exactly. Classification (action, nature, category) happens in Python over the few distinct
(raw code, 户别) pairs, never per record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
)

from .codes import CATEGORY_OF_LABEL, Action, Category, CodeTable, Nature
from .errors import UnmappedValue
from .profiles import Profile
from .register import RegisterMap

# SQLite groups by sorting every row (it has no hash aggregation), and sorting 10M rows costs more
# per row than sorting 1M (the census of a 10M register: 21.6 s, of 1M: 1.6 s). Grouped a range of
# a million keys at a time, the counts added up in Python, each sort stays small: 10M in 16.3 s.
GROUP_RANGE = 1_000_000
_MAX_RANGES = 10_000  # keys spread thinner than that: one grouped scan


def key_ranges(conn: Connection, key: ColumnElement[Any]) -> list[ColumnElement[bool] | None]:
    """Conditions splitting an integer key into ranges of :data:`GROUP_RANGE` values, to group
    range by range on SQLite; [None] for one grouped scan (other databases group by hashing; a
    text key). ``key`` must be the table's rowid (an INTEGER PRIMARY KEY, as in the tool's own
    tables): a range is then a seek and a contiguous read. Read them in one transaction
    (:func:`one_read`), as one statement would be."""
    if conn.dialect.name != "sqlite":
        return [None]
    # each bound on its own: SQLite reads one end of the rowid for a lone min() or max() only
    low, high = conn.execute(
        select(select(func.min(key)).scalar_subquery(), select(func.max(key)).scalar_subquery())
    ).one()
    if not isinstance(low, int) or not isinstance(high, int):
        return [None]
    if not 2 <= (high - low) // GROUP_RANGE + 1 <= _MAX_RANGES:
        return [None]
    starts = range(low, high + 1, GROUP_RANGE)
    # the first and last ranges open-ended: every key falls in one, whatever its value
    return [
        and_(
            *([key >= start] if start != low else []),
            *([key < start + GROUP_RANGE] if start != starts[-1] else []),
        )
        for start in starts
    ]


@contextmanager
def one_read(conn: Connection) -> Iterator[None]:
    """Several SELECTs of SQLite in one read transaction, as one statement would read: its driver
    begins none for a SELECT. Within the caller's transaction when one is open."""
    raw = conn.connection.driver_connection
    if conn.dialect.name != "sqlite" or raw is None or raw.in_transaction:
        yield
        return
    raw.execute("BEGIN")
    try:
        yield
    finally:
        raw.rollback()  # read only: nothing to keep


def in_scope(table: Table, scope: Iterable[str]) -> ColumnElement[bool]:
    # Prefixes are validated digits, so LIKE needs no escaping.
    prefixes = list(scope)
    if not prefixes:
        return false()
    return or_(*[table.c.division_code.like(prefix + "%") for prefix in prefixes])


def is_active(table: Table, active_statuses: Iterable[str]) -> ColumnElement[bool]:
    return table.c.status.in_(list(active_statuses))


@dataclass(frozen=True)
class CensusLine:
    in_scope: bool
    active: bool
    raw_code: str | None
    category_label: str | None
    records: int


def derive_category(codes: CodeTable, raw: str | None, label: str | None) -> Category | None:
    """户别 from the combined code when it has one, else from the 户别 column."""
    entry = codes.get(raw)
    if entry is not None and entry.category is not None:
        return entry.category
    if label is None:
        return None
    return CATEGORY_OF_LABEL.get(label)


@dataclass
class Census:
    lines: list[CensusLine]
    codes: CodeTable = field(repr=False)
    # the register keeps 户别 in its code only: a code to convert must name one
    needs_category: bool = False

    @property
    def total(self) -> int:
        return sum(line.records for line in self.lines)

    @property
    def out_of_scope(self) -> int:
        return sum(line.records for line in self.lines if not line.in_scope)

    @property
    def inactive(self) -> int:
        return sum(line.records for line in self.lines if line.in_scope and not line.active)

    def _scoped(self) -> list[CensusLine]:
        return [line for line in self.lines if line.in_scope and line.active]

    @property
    def in_scope_active(self) -> int:
        return sum(line.records for line in self._scoped())

    def by_action(self) -> Counter[Action | None]:
        out: Counter[Action | None] = Counter()
        for line in self._scoped():
            entry = self.codes.get(line.raw_code)
            out[entry.action if entry else None] += line.records
        return out

    @property
    def to_convert(self) -> int:
        return self.by_action()[Action.CONVERT]

    @property
    def already_resident(self) -> int:
        return self.by_action()[Action.RESIDENT]

    @property
    def not_permanent(self) -> int:
        return self.by_action()[Action.NOT_PERMANENT]

    def to_convert_by(self) -> Counter[tuple[Nature, Category | None]]:
        """Records to convert by (original nature, household category)."""
        out: Counter[tuple[Nature, Category | None]] = Counter()
        for line in self._scoped():
            entry = self.codes.get(line.raw_code)
            if entry is None or entry.action is not Action.CONVERT or entry.nature is None:
                continue
            category = derive_category(self.codes, line.raw_code, line.category_label)
            out[(entry.nature, category)] += line.records
        return out

    def unmapped(self) -> list[UnmappedValue]:
        counts: Counter[tuple[str | None, bool]] = Counter()
        for line in self._scoped():
            entry = self.codes.get(line.raw_code)
            if entry is None:
                counts[(line.raw_code, False)] += line.records
            elif (
                self.needs_category
                and entry.action is Action.CONVERT
                and derive_category(self.codes, line.raw_code, line.category_label) is None
            ):
                counts[(line.raw_code, True)] += line.records
        return [
            UnmappedValue(raw, n, no_category)
            for (raw, no_category), n in sorted(counts.items(), key=lambda kv: -kv[1])
        ]


def take_census(conn: Connection, register: RegisterMap, profile: Profile) -> Census:
    """One grouped scan of the register (on SQLite, one per range of keys: :func:`key_ranges`)."""
    table = register.table

    def grouped(within: ColumnElement[bool] | None) -> Select[Any]:
        flags = select(
            case((in_scope(table, profile.scope), literal(1)), else_=literal(0)).label("in_scope"),
            case((is_active(table, profile.active_statuses), literal(1)), else_=literal(0)).label(
                "active"
            ),
            register.column("hukou_type").label("raw_code"),
            register.column("household_category").label("category_label"),
        )
        if within is not None:
            flags = flags.where(within)
        sub = flags.subquery("flags")
        return select(
            sub.c.in_scope, sub.c.active, sub.c.raw_code, sub.c.category_label, func.count()
        ).group_by(sub.c.in_scope, sub.c.active, sub.c.raw_code, sub.c.category_label)

    counts: Counter[tuple[bool, bool, str | None, str | None]] = Counter()
    with one_read(conn):
        # a legacy table's key need not be its rowid: grouped in one scan
        ranges = key_ranges(conn, register.key_column) if register.builtin else [None]
        for within in ranges:
            for scoped, active, raw, label, records in conn.execute(grouped(within)):
                counts[(bool(scoped), bool(active), raw, label)] += int(records)
    lines = [CensusLine(*line, records) for line, records in counts.items()]
    lines.sort(
        key=lambda x: (not x.in_scope, not x.active, x.raw_code or "", x.category_label or "")
    )
    # a register whose written code depends on 户别 must know each converted record's
    return Census(lines, profile.codes, needs_category=bool(register.resident_by_category))
