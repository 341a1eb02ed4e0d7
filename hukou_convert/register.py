"""The register as the tool reads and writes it: the built-in table, or a legacy table in place.

Every module that touches the register takes a :class:`RegisterMap`. Its ``table`` is a SQLAlchemy
``Table`` whose columns carry the tool's field names as keys (``table.c.hukou_type`` may be the
legacy ``户口类别`` column), so the SQL is the same for both; what differs is said here: which fields
the table has, and what code a converted record gets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CHAR,
    ColumnElement,
    DateTime,
    Dialect,
    FromClause,
    Table,
    and_,
    case,
    func,
    literal,
    null,
    true,
)
from sqlalchemy.types import TypeDecorator

from . import schema
from .codes import RESIDENT_TYPE, Action, Category
from .errors import ProfileError
from .instants import CST, to_cst
from .profiles import Profile

RecordKey = int | str  # a register key: integer (built-in register), or a legacy table's text key
KEY = "record_id"  # the key column's field name, whatever the column is called
# Columns of a legacy table that no field names are keyed with this prefix: the fingerprint and
# the structure checks see every column, the SQL the tool writes never names them.
OTHER_COLUMN_PREFIX = "other:"


class WallClockCST(TypeDecorator[datetime]):
    """A legacy ``timestamp without time zone`` column: China Standard Time wall-clock, read back
    as an aware +08:00 instant and compared with aware instants in CST."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return to_cst(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=CST) if value.tzinfo is None else value.astimezone(CST)


@dataclass(frozen=True)
class RegisterMap:
    """Where the register lives, how its columns map to fields, and what the conversion writes."""

    table: Table  # every column; mapped ones keyed by field name, the key as ``record_id``
    key_is_integer: bool = True
    active_values: tuple[str, ...] | None = None  # None: the profile's active statuses
    resident: str | None = RESIDENT_TYPE  # the code written when 户别 has its own column
    resident_by_category: Mapping[Category, str] = field(default_factory=dict)
    # the 户别 column's own values -> our label (家庭户 / 集体户); labels themselves need no entry
    category_values: Mapping[str, str] = field(default_factory=dict)
    source: str = "built-in schema"
    mapping_json: str | None = None  # what a run keeps to find this register again
    identity: str | None = None  # the mapping's content, whatever file it was read from

    @property
    def builtin(self) -> bool:
        return self.mapping_json is None

    @property
    def key_column(self) -> Any:
        return self.table.c[KEY]

    @property
    def display_name(self) -> str:
        return self.table.fullname

    def key_of(self, value: Any) -> RecordKey:
        """A key as read from the register or kept in a ledger, in its Python form."""
        return int(value) if self.key_is_integer else str(value)

    def key_range(self, after: Any, upto: Any) -> ColumnElement[bool]:
        """The records with keys after ``after`` up to ``upto`` (None: unbounded), the bounds as
        a ledger keeps them (text)."""
        key = self.key_column
        return and_(
            key > self.key_of(after) if after is not None else true(),
            key <= self.key_of(upto) if upto is not None else true(),
        )

    def sorted_keys(self, keys: Iterable[RecordKey]) -> list[RecordKey]:
        return sorted(keys, key=lambda k: (0, k, "") if isinstance(k, int) else (1, 0, k))

    def ours(self, table: FromClause, prefix: str = "record") -> Any:
        """The column of one of our tables that holds this register's keys: ``record_id`` for an
        integer key, ``record_key`` for a text one (``outcome_record_…`` with a prefix)."""
        return table.c[f"{prefix}_id" if self.key_is_integer else f"{prefix}_key"]

    def changed_after(self, instant: ColumnElement[Any], backend: str) -> ColumnElement[bool]:
        """The record's last-change time is later than one of our instants (a history column)."""
        updated = self.table.c.updated_at
        if backend == "postgresql" and isinstance(updated.type, WallClockCST):
            # ours is timestamptz: compare as CST wall-clock, not in the session's UTC
            return updated > func.timezone("Asia/Shanghai", instant)
        return updated > instant

    @property
    def table_identity(self) -> str | None:
        """The table as the database knows it (schema.table), None for the built-in register."""
        if self.mapping_json is None:
            return None
        return str(json.loads(self.mapping_json)["table"])

    def has(self, *fields: str) -> bool:
        return all(f in self.table.c for f in fields)

    @property
    def has_category_column(self) -> bool:
        return self.has("household_category")

    def column(self, name: str) -> ColumnElement[Any]:
        """The field's column, or NULL where the table has none (labelled with the field's name).
        A legacy 户别 column reads as our labels where the mapping says what its values mean;
        a CHAR code column without its padding (PostgreSQL pads it when read)."""
        if name not in self.table.c:
            return null().label(name)
        column: ColumnElement[Any] = self.table.c[name]
        if name == "household_category" and self.category_values:
            return case(dict(self.category_values), value=column, else_=column)
        if name == "hukou_type" and isinstance(column.type, CHAR):
            return func.rtrim(column)
        return column

    @property
    def writes_category(self) -> bool:
        """The conversion rewrites 户别 to the code's (our labels) only in the built-in register:
        a legacy table's 户别 column keeps its own values, and the run writes the code alone."""
        return self.builtin and self.has_category_column

    def keep_change_time(self) -> dict[Any, Any]:
        """SET clauses that leave a change-time column as it is: MySQL's ON UPDATE
        CURRENT_TIMESTAMP would otherwise stamp every converted record."""
        if self.builtin or not self.has("updated_at"):
            return {}
        return {self.table.c.updated_at: self.table.c.updated_at}

    def resident_code(self, category: ColumnElement[Any]) -> ColumnElement[Any]:
        """The code a converted record gets, given its 户别 (a ``Category`` value) as SQL."""
        if self.resident_by_category:
            return case(
                {cat.value: code for cat, code in self.resident_by_category.items()},
                value=category,
            )
        return literal(self.resident)

    @property
    def resident_codes(self) -> list[str]:
        if self.resident_by_category:
            return list(self.resident_by_category.values())
        return [self.resident] if self.resident is not None else []

    def effective_profile(self, profile: Profile) -> Profile:
        """The profile as this register reads it: the mapping's active status values, and the
        codes the tool writes known as already resident (a rehearsal after a cutover finds them)."""
        if self.builtin:
            return profile
        changes: dict[str, Any] = {}
        if self.active_values is not None and self.active_values != profile.active_statuses:
            changes["active_statuses"] = self.active_values
        missing = [
            c
            for c in self.resident_codes
            if (e := profile.codes.get(c)) is None or e.action is not Action.RESIDENT
        ]
        if missing:
            raise ProfileError(
                f"profile {profile.name!r} does not map the resident code(s)"
                f" {', '.join(repr(c) for c in missing)} that {self.source} writes as already"
                ' resident (action = "resident"): a rehearsal after the cutover could not'
                " account for the converted records"
            )
        return dataclasses.replace(profile, **changes) if changes else profile


BUILTIN_REGISTER = RegisterMap(table=schema.register)
