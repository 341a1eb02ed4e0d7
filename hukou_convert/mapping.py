"""Mapping files: a legacy register table, where it lives, read through our field names.

A real bureau's register is a table in its own database with its own column names (often Chinese)
and its own code values. A mapping file (TOML) names the table, its key and which of its columns hold
each field the cutover needs; ``load_mapping`` validates every name against an allowlist pattern and
the reflected schema before any SQL runs, and builds a SQLAlchemy ``Table`` whose columns carry our
field names as keys (``table.c.hukou_type`` is the legacy ``户口性质`` column): the SQL the tool writes
is then the same for the built-in schema and for a legacy table. Values always travel as bound
parameters.

```toml
[register]
table = "常住人口"          # the register table
schema = "legacy"          # optional
key = "人员编号"            # a single-column unique key (integer or text)

[columns]                  # field = column; id_number, hukou_type, division_code, status required
id_number = "公民身份号码"
hukou_type = "户口性质"
household_category = "户别"  # optional: absent when the code carries the category
division_code = "行政区划代码"
status = "人员状态"
updated_at = "变更时间"
name = "姓名"
birth_date = "出生日期"
sex = "性别"
household_id = "户号"

[values]
active = ["正常"]            # the status value(s) meaning an active record
resident = "居民户口"         # the code written, 户别 kept in its own column
# or, for registers that store one combined code:
# resident_family = "11"     # 居民家庭户口 in this system's values
# resident_collective = "12" # 居民集体户口
```
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, func, inspect, select

from .codes import CATEGORY_LABELS, CATEGORY_OF_LABEL, Action, Category
from .db import translate_errors
from .errors import ProfileError
from .profiles import Profile
from .register import BUILTIN_REGISTER, KEY, OTHER_COLUMN_PREFIX, RegisterMap, WallClockCST

# Names a mapping may use: letters (CJK included), digits and underscores, at most 64 characters.
NAME_PATTERN = re.compile(r"[^\W\d][\w]{0,63}|\d[\w]{0,63}")

REQUIRED_FIELDS = ("id_number", "hukou_type", "division_code", "status")
OPTIONAL_FIELDS = (
    "household_category",
    "updated_at",
    "name",
    "birth_date",
    "sex",
    "household_id",
    "address",
    "police_station",
    "relation",
)


NO_CATEGORY = "convert, but no 户别"


class MappingError(ProfileError):
    """A mapping file that is invalid or does not match the database: nothing was run."""


def load_mapping_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MappingError(f"{path}: mapping file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: not a valid TOML mapping: {exc}") from None


def _name(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise MappingError(
            f"{path}: {where} = {value!r} is not an allowed name (letters, digits and _ only,"
            " at most 64 characters)"
        )
    return value


def load_mapping(engine: Engine, path: Path) -> RegisterMap:
    """Validate a mapping file against the allowlist and the reflected schema; build its map."""
    return register_from_mapping(engine, load_mapping_file(path), path)


def load_register(engine: Engine, path: Path | None) -> RegisterMap:
    """The register a command works on: the built-in one, or the legacy table a mapping names."""
    return BUILTIN_REGISTER if path is None else load_mapping(engine, path)


def register_from_json(engine: Engine, text: str) -> RegisterMap:
    """The register a run was recorded with, validated against the database again."""
    kept = json.loads(text)
    return register_from_mapping(engine, kept["mapping"], Path(kept["source"]))


def register_from_mapping(engine: Engine, data: dict[str, Any], path: Path) -> RegisterMap:
    unknown = set(data) - {"register", "columns", "values"}
    if unknown:
        raise MappingError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    register = dict(data.get("register", {}))
    columns = dict(data.get("columns", {}))
    values = dict(data.get("values", {}))
    table_name = _name(path, "register.table", register.get("table"))
    schema_name = (
        _name(path, "register.schema", register["schema"]) if "schema" in register else None
    )
    key_name = _name(path, "register.key", register.get("key"))
    fields = {f: _name(path, f"columns.{f}", c) for f, c in columns.items()}
    for f in fields:
        if f not in REQUIRED_FIELDS and f not in OPTIONAL_FIELDS:
            raise MappingError(f"{path}: columns.{f} is not a field the tool knows")
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise MappingError(f"{path}: [columns] lacks required field(s) {', '.join(missing)}")

    with translate_errors():
        inspector = inspect(engine)
        # the table as the database knows it: the same table named with or without its schema
        table_identity = f"{schema_name or inspector.default_schema_name or ''}.{table_name}"
        if not inspector.has_table(table_name, schema=schema_name):
            where = f"{schema_name}.{table_name}" if schema_name else table_name
            raise MappingError(f"{path}: no table {where!r} in the database")
        reflected = {c["name"]: c for c in inspector.get_columns(table_name, schema=schema_name)}
        unique_sets = _unique_column_sets(inspector, table_name, schema_name)
    for where, column in [
        ("register.key", key_name),
        *((f"columns.{f}", c) for f, c in fields.items()),
    ]:
        if column not in reflected:
            raise MappingError(f"{path}: {where} = {column!r}: no such column in {table_name!r}")
    if (key_name,) not in unique_sets:
        composite = [s for s in unique_sets if key_name in s]
        detail = (
            f" (it is part of the composite key {', '.join(composite[0])})" if composite else ""
        )
        raise MappingError(
            f"{path}: register.key {key_name!r} is not a single-column unique key of"
            f" {table_name!r}{detail}: name a column with a primary key or unique index of its own"
        )
    # Values the tool compares as text must be text (a LIKE on an integer division code is an
    # error on PostgreSQL and a wrong answer elsewhere); the change time must be a date-time.
    for f in ("hukou_type", "id_number", "division_code", "status"):
        column_type = reflected[fields[f]]["type"]
        if not isinstance(column_type, String) and _python_type(column_type) is not str:
            raise MappingError(
                f"{path}: columns.{f} {fields[f]!r} is not a text column ({column_type}):"
                " it is compared as text; map a view that casts it"
            )
    if "updated_at" in fields and not isinstance(reflected[fields["updated_at"]]["type"], DateTime):
        raise MappingError(
            f"{path}: columns.updated_at {fields['updated_at']!r} is not a date-time column"
            f" ({reflected[fields['updated_at']]['type']}): map a view that casts it"
        )
    key_type = reflected[key_name]["type"]
    key_is_integer = _python_type(key_type) is int
    if not key_is_integer:
        # Our tables keep a text key in 64 characters (record_key); other types are not keys
        # the batches can order and compare portably.
        length = getattr(key_type, "length", None)
        if not isinstance(key_type, String) or (length is not None and length > 64):
            raise MappingError(
                f"{path}: register.key {key_name!r} is {key_type}: the key must be an integer"
                " column or a text column of at most 64 characters"
            )
    if "record_id" in fields:
        raise MappingError(f"{path}: columns.record_id: the key is named by register.key")
    field_of = {column: f for f, column in fields.items()}
    if len(field_of) != len(fields) or key_name in field_of:
        raise MappingError(f"{path}: one column is mapped to two fields (the key included)")
    field_of[key_name] = KEY
    # Every column of the table, in its order: mapped ones keyed by field, the others by their
    # name behind a prefix (the fingerprint covers them; no SQL the tool writes names them).
    table = Table(
        table_name,
        MetaData(),
        *(
            Column(
                name,
                _field_type(field_of.get(name), info["type"]),
                key=field_of.get(name, OTHER_COLUMN_PREFIX + name),
                primary_key=name == key_name,
                autoincrement=False,
            )
            for name, info in reflected.items()
        ),
        schema=schema_name,
    )
    resident, by_category = _resident_codes(path, values, "household_category" in fields)
    category_values = _category_values(path, values, "household_category" in fields)
    active = values.get("active")
    if active is not None and (
        not isinstance(active, list) or not all(isinstance(v, str) for v in active)
    ):
        raise MappingError(f"{path}: values.active must be a list of strings")
    return RegisterMap(
        table=table,
        key_is_integer=key_is_integer,
        active_values=tuple(active) if active is not None else None,
        resident=resident,
        resident_by_category=by_category,
        category_values=category_values,
        source=str(path),
        mapping_json=json.dumps(
            {"source": str(path), "mapping": data, "table": table_identity},
            ensure_ascii=False,
            sort_keys=True,
        ),
        identity=mapping_identity(data),
    )


def mapping_identity(data: dict[str, Any]) -> str:
    """What makes two mappings the same register: their content, not the file's path."""
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def _category_values(path: Path, values: dict[str, Any], has_category: bool) -> dict[str, str]:
    """``values.family`` / ``values.collective``: what the 户别 column's own values mean."""
    out: dict[str, str] = {}
    for name, label in (("family", "家庭户"), ("collective", "集体户")):
        listed = values.get(name)
        if listed is None:
            continue
        if not has_category:
            raise MappingError(f"{path}: values.{name} needs a 户别 column (household_category)")
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise MappingError(f"{path}: values.{name} must be a list of strings")
        for value in listed:
            if value in out:
                raise MappingError(f"{path}: 户别 value {value!r} is both family and collective")
            out[value] = label
    return out


def _field_type(name: str | None, reflected: Any) -> Any:
    """A last-change time without a time zone is China Standard Time wall-clock (every legacy
    system in reach keeps it so): compared with the cutoff and our instants in CST."""
    if name == "updated_at" and isinstance(reflected, DateTime) and not reflected.timezone:
        return WallClockCST()
    return reflected


def _python_type(column_type: Any) -> type | None:
    try:
        found = column_type.python_type
    except NotImplementedError:
        return None
    return found if isinstance(found, type) else None


def _resident_codes(
    path: Path, values: dict[str, Any], has_category: bool
) -> tuple[str | None, dict[Category, str]]:
    family, collective = values.get("resident_family"), values.get("resident_collective")
    if family is not None or collective is not None:
        if not (isinstance(family, str) and isinstance(collective, str)):
            raise MappingError(
                f"{path}: a combined-code register needs both values.resident_family and"
                " values.resident_collective"
            )
        return None, {Category.FAMILY: family, Category.COLLECTIVE: collective}
    resident = values.get("resident", "居民户口")
    if not isinstance(resident, str):
        raise MappingError(f"{path}: values.resident must be a string")
    if not has_category:
        raise MappingError(
            f"{path}: without a 户别 column (columns.household_category) the register keeps the"
            " category in its code: give values.resident_family and values.resident_collective"
        )
    return resident, {}


def _unique_column_sets(
    inspector: Any, table_name: str, schema_name: str | None
) -> set[tuple[str, ...]]:
    sets: set[tuple[str, ...]] = set()
    pk = inspector.get_pk_constraint(table_name, schema=schema_name)
    if pk and pk.get("constrained_columns"):
        sets.add(tuple(pk["constrained_columns"]))
    for uc in inspector.get_unique_constraints(table_name, schema=schema_name):
        sets.add(tuple(uc["column_names"]))
    for ix in inspector.get_indexes(table_name, schema=schema_name):
        if ix.get("unique"):
            sets.add(tuple(c for c in ix["column_names"] if c is not None))
    return sets


@dataclass
class MappingReport:
    """What ``mapping check`` found: the table, its size, and the code values present."""

    source: str
    table: str
    key: str
    key_is_integer: bool
    records: int
    codes: list[tuple[str | None, int, str]]  # raw value, records, what the profile does with it
    statuses: list[tuple[str | None, int, bool]]  # raw value, records, counted as active
    # 户别 values present (when mapped): raw value, records, the category it reads as
    categories: list[tuple[str | None, int, str]] = field(default_factory=list)

    @property
    def unmapped(self) -> list[tuple[str | None, int, bool]]:
        """(raw value, records, True when mapped but naming no 户别 the register could give)."""
        return [
            (raw, n, what == NO_CATEGORY)
            for raw, n, what in self.codes
            if what in ("UNMAPPED", NO_CATEGORY)
        ]


def check_mapping(engine: Engine, path: Path, profile: Profile) -> MappingReport:
    """Validate a mapping, then sample the code and status values present in the register."""
    reg = load_mapping(engine, path)
    t = reg.table
    active = reg.active_values or profile.active_statuses
    with translate_errors(), engine.connect() as conn:
        records = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        codes = []
        for raw, n in conn.execute(
            select(t.c.hukou_type, func.count())
            .group_by(t.c.hukou_type)
            .order_by(func.count().desc())
        ):
            raw_text = None if raw is None else str(raw)
            entry = profile.codes.get(raw_text)
            what = entry.action.value if entry else "UNMAPPED"
            if (
                entry is not None
                and entry.action is Action.CONVERT
                and entry.category is None
                and not reg.has_category_column
            ):
                what = NO_CATEGORY  # the resident code to write would be unknown
            codes.append((raw_text, int(n), what))
        statuses = [
            (None if raw is None else str(raw), int(n), str(raw) in active)
            for raw, n in conn.execute(
                select(t.c.status, func.count()).group_by(t.c.status).order_by(func.count().desc())
            )
        ]
        categories = []
        if reg.has_category_column:
            raw_column = t.c.household_category
            for raw, n in conn.execute(
                select(raw_column, func.count()).group_by(raw_column).order_by(func.count().desc())
            ):
                label = None if raw is None else reg.category_values.get(str(raw), str(raw))
                category = CATEGORY_OF_LABEL.get(label or "")
                what = CATEGORY_LABELS[category] if category else "unknown 户别"
                categories.append((None if raw is None else str(raw), int(n), what))
    return MappingReport(
        source=str(path),
        table=reg.display_name,
        key=str(reg.key_column.name),
        key_is_integer=reg.key_is_integer,
        records=records,
        codes=codes,
        statuses=statuses,
        categories=categories,
    )
