"""The history table after the reform: "what was this person's type before the reform?"."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, String, and_, cast, func, select

from . import schema
from .codes import CATEGORY_LABELS, NATURE_LABELS, Category, Nature, code_table_from_json
from .db import translate_errors
from .errors import ProfileError, RegisterStateError
from .idnumbers import has_valid_check, normalise, upgrade15
from .runs import run_register

H = schema.history
R = schema.register
RUNS = schema.runs


@dataclass(frozen=True)
class HistoryEntry:
    name: str | None
    original_code: str | None
    original_label: str
    original_nature: str
    nature_label: str
    household_category: str | None
    category_label: str
    effective_at: datetime
    run_id: str
    reverted_at: datetime | None


@dataclass
class LookupResult:
    query: str  # as given
    id_number: str  # normalised (15-digit numbers upgraded to 18)
    status: str  # found | not-found | invalid | ambiguous
    entries: list[HistoryEntry] = field(default_factory=list)
    note: str = ""


_LOOKUP_CHUNK = 500


def lookup(
    engine: Engine, queries: Iterable[str], labels: dict[str, dict[str, str]] | None = None
) -> list[LookupResult]:
    """History entries per ID number, newest run first; not-found and invalid IDs are kept.
    ``labels`` (from :func:`run_labels`) saves re-reading the runs' code tables per call."""
    results: list[LookupResult] = []
    for raw in queries:
        number = normalise(raw)
        note = ""
        if len(number) == 15:
            upgraded = upgrade15(number)
            if upgraded is not None:
                note = "15-digit number, looked up as its 18-digit form"
                number = upgraded
        valid = has_valid_check(number)
        results.append(
            LookupResult(
                raw,
                number,
                "found" if valid else "invalid",
                note=note
                or ("" if valid else "not a valid 18-digit ID number (check character or format)"),
            )
        )
    with translate_errors():
        if "hukou_type_history" in schema.missing_tables(engine):
            raise RegisterStateError("no history table in this database: no cutover has run")
        # A register may hold the old 15-digit form of a number asked in 18 digits, or the reverse:
        # both forms are looked up.
        by_number: dict[str, list[LookupResult]] = {}
        for r in results:
            for form in {r.id_number, *_other_forms(r.id_number)}:
                by_number.setdefault(form, []).append(r)
        numbers = list(by_number)
        if labels is None:
            labels = run_labels(engine)
        # the name is the register's: the built-in one's, or that of the legacy table a run
        # converted in place (a record key means nothing in another register)
        builtin_runs = select(RUNS.c.run_id).where(RUNS.c.register_mapping.is_(None))
        rows: list[Any] = []
        with engine.connect() as conn:
            for start in range(0, len(numbers), _LOOKUP_CHUNK):
                chunk = numbers[start : start + _LOOKUP_CHUNK]
                rows += conn.execute(
                    select(
                        H.c.id_number,
                        func.coalesce(cast(H.c.record_id, String), H.c.record_key).label(
                            "record_key"
                        ),
                        R.c.name,
                        H.c.original_code,
                        H.c.original_nature,
                        H.c.household_category,
                        H.c.effective_at,
                        H.c.run_id,
                        H.c.reverted_at,
                    )
                    .select_from(H)
                    .outerjoin(
                        R, and_(R.c.record_id == H.c.record_id, H.c.run_id.in_(builtin_runs))
                    )
                    .where(H.c.id_number.in_(chunk))
                    .order_by(H.c.id_number, H.c.converted_at.desc(), H.c.history_id.desc())
                ).all()
        in_place = _names_in_place(engine, rows)
        for row in rows:
            entry = HistoryEntry(
                name=in_place.get((row.run_id, row.record_key), row.name),
                original_code=row.original_code,
                original_label=labels.get(row.run_id, {}).get(
                    row.original_code or "", row.original_code or ""
                ),
                original_nature=row.original_nature,
                nature_label=NATURE_LABELS[Nature(row.original_nature)],
                household_category=row.household_category,
                category_label=CATEGORY_LABELS[Category(row.household_category)]
                if row.household_category
                else "",
                effective_at=row.effective_at,
                run_id=row.run_id,
                reverted_at=row.reverted_at,
            )
            for r in by_number.get(row.id_number, []):
                r.entries.append(entry)
    for r in results:
        if not r.entries and r.status == "found":
            r.status = "not-found"
        elif r.entries and r.status == "invalid":
            r.status = "found"  # an invalid number that the register holds all the same
        live = [e for e in r.entries if e.reverted_at is None]
        if len(live) > 1:
            # one person, several converted records (e.g. registered with both the 15- and the
            # 18-digit number): never pick one answer silently
            r.status = "ambiguous"
            types = "、".join(sorted({e.original_label for e in live}))
            r.note = (
                f"{len(live)} 条有效转换记录（{types}），须核实；重号见 check DUPLICATE_ID_NUMBER"
            )
    return results


def _names_in_place(engine: Engine, rows: list[Any]) -> dict[tuple[str, str], str | None]:
    """Names of records converted in place, from each run's legacy table."""
    wanted: dict[str, set[str]] = {}
    for row in rows:
        wanted.setdefault(row.run_id, set()).add(str(row.record_key))
    with engine.connect() as conn:
        mapped = {
            r.run_id: r
            for r in conn.execute(
                select(RUNS).where(
                    RUNS.c.run_id.in_(list(wanted)), RUNS.c.register_mapping.is_not(None)
                )
            )
        }
    names: dict[tuple[str, str], str | None] = {}
    for run_id, run in mapped.items():
        try:
            reg = run_register(engine, run)
        except ProfileError:
            continue  # the legacy table is gone or changed since: the history answers without names
        if not reg.has("name"):
            continue
        keys = reg.sorted_keys(reg.key_of(k) for k in wanted[run_id])
        with engine.connect() as conn:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                for key, name in conn.execute(
                    select(reg.key_column, reg.table.c.name).where(
                        reg.key_column.in_(keys[start : start + _LOOKUP_CHUNK])
                    )
                ):
                    names[(run_id, str(key))] = name
    return names


def run_labels(engine: Engine) -> dict[str, dict[str, str]]:
    """Raw code -> legacy label, per run, from the code table each run used."""
    out: dict[str, dict[str, str]] = {}
    with engine.connect() as conn:
        for run_id, table in conn.execute(select(RUNS.c.run_id, RUNS.c.code_table)):
            codes = code_table_from_json(table)
            out[run_id] = {e.raw: codes.label(e.raw) for e in codes.entries()}
    return out


def current_entry(result: LookupResult) -> HistoryEntry | None:
    """The entry that answers "what was the type before the reform": the newest live one."""
    for entry in result.entries:
        if entry.reverted_at is None:
            return entry
    return None


def _other_forms(number: str) -> list[str]:
    """The 15-digit form of an 18-digit number born in the 1900s (what a legacy register may hold)."""
    if len(number) == 18 and number[6:8] == "19" and number[:17].isdigit():
        return [number[:6] + number[8:17]]
    return []
