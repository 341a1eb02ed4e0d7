"""Helpers shared by the tests: state snapshots of a database, and small registers."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import openpyxl
from sqlalchemy import Engine, inspect, select

from hukou_convert import schema
from hukou_convert.sample import PERSON_HEADER, person_id, person_row


def table_dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in key order: equal dumps mean an identical database."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    names = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            if table.name not in names:
                continue
            keys = list(table.primary_key.columns) or list(table.columns)
            out[table.name] = [tuple(r) for r in conn.execute(select(table).order_by(*keys))]
    return out


def conversion_state(engine: Engine) -> str:
    """Checksum over what the cutover decides: each record's id, type, category, and the history
    rows (without the run id and wall-clock time, which differ between two runs)."""
    R, H = schema.register, schema.history
    digest = hashlib.sha256()
    with engine.connect() as conn:
        for row in conn.execute(
            select(R.c.record_id, R.c.id_number, R.c.hukou_type, R.c.household_category).order_by(
                R.c.record_id
            )
        ):
            digest.update(repr(tuple(row)).encode())
        for row in conn.execute(
            select(
                H.c.record_id,
                H.c.id_number,
                H.c.original_code,
                H.c.original_nature,
                H.c.household_category,
                H.c.new_type,
                H.c.effective_at,
                H.c.division_code,
                H.c.reverted_at,
            ).order_by(H.c.record_id, H.c.history_id)
        ):
            digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def ident(address: str, birth: str, seq: int) -> str:
    return person_id(address, birth, seq)


def person(number: str, htype: str, **fields: str) -> dict[str, str]:
    return person_row(number, htype, **fields)


def write_register(path: Path, rows: list[dict[str, str]], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as fh:
        writer = csv.DictWriter(fh, PERSON_HEADER)
        writer.writeheader()
        writer.writerows(rows)
    return path


def sheet_table(path: Path, sheet: str) -> list[dict[str, Any]]:
    """A workbook sheet's table read back with openpyxl: one dict per row, by header name (rows
    below the autofilter range excluded)."""
    ws = openpyxl.load_workbook(path)[sheet]
    ref = ws.auto_filter.ref
    assert ref, f"{sheet}: no autofilter"
    last = int("".join(ch for ch in ref.split(":")[1] if ch.isdigit()))
    header = [c.value for c in ws[1]]
    return [
        dict(zip(header, row, strict=True))
        for row in ws.iter_rows(min_row=2, max_row=last, values_only=True)
    ]


def record_unfinished_run(
    engine: Engine,
    run_id: str,
    *,
    register: Any = None,
    profile: Any = None,
    cutoff: Any = None,
) -> None:
    """A run recorded as a cutover records it before its first batch, and never continued: what a
    kill right after the run's first transaction leaves (zhenhai on the built-in register unless
    told otherwise)."""
    from hukou_convert.census import take_census
    from hukou_convert.instants import now
    from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
    from hukou_convert.register import BUILTIN_REGISTER
    from hukou_convert.run_start import record_run, store_census

    profile = profile if profile is not None else BUILTIN_PROFILES["zhenhai"]
    cutoff = cutoff if cutoff is not None else resolve_cutoff(profile, None)
    register = register if register is not None else BUILTIN_REGISTER
    with engine.begin() as conn:
        record_run(conn, register, run_id, profile, cutoff, [], {}, 10, now())
        store_census(conn, run_id, take_census(conn, register, profile), "")
