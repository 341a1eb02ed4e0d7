"""Divisions: the NBS 统计用区划和城乡划分代码 table the tool ships, and tables imported over it.

The shipped table holds the NBS 2016 codes for the five jurisdictions (data from Vonng/adcode, CC BY
4.0, itself from the National Bureau of Statistics; see README). ``hukou-convert divisions import FILE``
loads another year or jurisdiction in the same format into ``hukou_divisions``; every name and
urban-rural code the tool shows then comes from :func:`division_lookup`: the imported rows overlaid on
the shipped table, the imported row winning.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, bindparam, func, insert, inspect, select, update

from . import schema
from .db import translate_errors
from .errors import InputFileError
from .progress import Progress, no_progress
from .readers import Cell, is_bad_record, open_table

HEADER = ("code", "name", "level", "parent_code", "urban_rural_code")
SHOWN_REJECTS = 20
D = schema.divisions


@dataclass(frozen=True)
class Division:
    code: str  # 12 digits
    name: str
    level: int  # 2 city, 3 county/district, 4 township, 5 village/community
    parent_code: str
    urban_rural_code: str | None  # level 5 only: 1xx urban, 2xx rural

    @property
    def is_urban(self) -> bool | None:
        if not self.urban_rural_code:
            return None
        return self.urban_rural_code.startswith("1")


@cache
def shipped_divisions() -> tuple[Division, ...]:
    text = (
        resources.files("hukou_convert").joinpath("data/divisions_5cities.csv").read_text("utf-8")
    )
    return tuple(parse_divisions(io.StringIO(text)))


def parse_divisions(fh: io.TextIOBase | io.StringIO) -> list[Division]:
    out = []
    for row in csv.DictReader(fh):
        out.append(
            Division(
                code=row["code"],
                name=row["name"],
                level=int(row["level"]),
                parent_code=row["parent_code"],
                urban_rural_code=row.get("urban_rural_code") or None,
            )
        )
    return out


def villages_in(scope: tuple[str, ...]) -> list[Division]:
    """Level-5 units (居委会/村委会) under the scope prefixes."""
    return [
        d for d in shipped_divisions() if d.level == 5 and any(d.code.startswith(p) for p in scope)
    ]


def by_code() -> dict[str, Division]:
    return {d.code: d for d in shipped_divisions()}


# ---------------------------------------------------------------- the table in the database


def division_lookup(engine: Engine) -> dict[str, Division]:
    """Code -> division: the imported table overlaid on the shipped one (imported rows win), or the
    shipped table alone while nothing was imported. A few tens of thousands of rows at most."""
    table = by_code()
    with translate_errors():
        if not inspect(engine).has_table(D.name):
            return table
        with engine.connect() as conn:
            for r in conn.execute(
                select(D.c.code, D.c.name, D.c.level, D.c.parent_code, D.c.urban_rural_code)
            ):
                table[r.code] = Division(
                    r.code, r.name, int(r.level), r.parent_code or "", r.urban_rural_code or None
                )
    return table


def list_divisions(engine: Engine, prefix: str = "") -> list[Division]:
    """The divisions in effect whose code starts with ``prefix``, in code order."""
    return sorted(
        (d for code, d in division_lookup(engine).items() if code.startswith(prefix)),
        key=lambda d: d.code,
    )


@dataclass(frozen=True)
class DivisionReject:
    line: int
    column: str
    reason: str


@dataclass
class DivisionImportResult:
    file: Path
    sha256: str
    rows: int
    inserted: int
    updated: int
    unchanged: int
    in_effect: int  # divisions known after the import (shipped and imported)


_LEVEL_ZEROS = {2: 8, 3: 6, 4: 3, 5: 0}  # trailing zeros of a code at each level


def _text(cell: Cell) -> str:
    if cell is None:
        return ""
    if isinstance(cell, bool):
        return str(cell)
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    if isinstance(cell, datetime | date):
        return cell.isoformat()
    return str(cell).strip()


def validate_division(line: int, cells: Sequence[str]) -> Division | DivisionReject:
    """One row of a division file (``code,name,level,parent_code,urban_rural_code``)."""
    code, name, level_text, parent, urban_rural = cells

    def reject(column: str, reason: str) -> DivisionReject:
        return DivisionReject(line, column, reason)

    if len(code) != 12 or not code.isdigit():
        return reject("code", "not a 12-digit division code")
    if not name:
        return reject("name", "empty")
    if len(name) > D.c.name.type.length:  # type: ignore[attr-defined]
        return reject("name", f"longer than {D.c.name.type.length} characters")  # type: ignore[attr-defined]
    if level_text not in ("2", "3", "4", "5"):
        return reject("level", "not a level from 2 (city) to 5 (village-level unit)")
    level = int(level_text)
    zeros = _LEVEL_ZEROS[level]
    if zeros and code[-zeros:] != "0" * zeros:
        return reject("code", f"a level-{level} code ends in {zeros} zeros")
    if parent and (len(parent) != 12 or not parent.isdigit()):
        return reject("parent_code", "not a 12-digit division code")
    if urban_rural and (len(urban_rural) != 3 or not urban_rural.isdigit()):
        return reject("urban_rural_code", "not a 3-digit urban-rural code (or empty)")
    if urban_rural and urban_rural[0] not in "12":
        return reject("urban_rural_code", "urban-rural codes are 1xx (urban) or 2xx (rural)")
    return Division(code, name, level, parent, urban_rural or None)


def read_division_file(path: Path, progress: Progress = no_progress) -> tuple[str, list[Division]]:
    """Every row of a division file, validated: (its SHA-256, the divisions). Any invalid row, or a
    file that cannot be read, raises InputFileError naming line and column: nothing is loaded."""
    table = open_table(path)
    name = str(path)
    header = [h.strip().lstrip("\ufeff").lower() for h in table.header]
    for column in HEADER:
        if header.count(column) != 1:
            what = "lacks" if column not in header else "repeats"
            raise InputFileError(
                name, f"the header {what} column {column!r} ({','.join(HEADER)})", 1, column
            )
    index = [header.index(c) for c in HEADER]
    rejects: list[DivisionReject] = []
    out: list[Division] = []
    seen: dict[str, int] = {}
    for row in table.rows(progress):
        bad = is_bad_record(row.cells)
        if bad is not None or len(row.cells) < len(table.header):
            rejects.append(DivisionReject(row.line, "-", bad or "fewer fields than the header"))
            continue
        checked = validate_division(row.line, [_text(row.cells[i]) for i in index])
        if isinstance(checked, DivisionReject):
            rejects.append(checked)
        elif checked.code in seen:
            rejects.append(
                DivisionReject(row.line, "code", f"code already given on line {seen[checked.code]}")
            )
        else:
            seen[checked.code] = row.line
            out.append(checked)
    if rejects:
        shown = "; ".join(
            f"line {r.line}, column {r.column}: {r.reason}" for r in rejects[:SHOWN_REJECTS]
        )
        more = (
            f"; … and {len(rejects) - SHOWN_REJECTS} more" if len(rejects) > SHOWN_REJECTS else ""
        )
        raise InputFileError(
            name, f"{len(rejects)} invalid row(s), nothing was loaded: {shown}{more}"
        )
    if not out:
        raise InputFileError(name, "no division rows: nothing was loaded")
    return table.sha256, out


def import_divisions(
    engine: Engine, path: Path, progress: Progress = no_progress
) -> DivisionImportResult:
    """Load a division file into ``hukou_divisions``: insert new codes, update changed ones, in one
    transaction. Divisions absent from the file are kept (a file may cover one jurisdiction)."""
    sha256, rows = read_division_file(path, progress)
    source = f"{path.name} sha256:{sha256}"[: D.c.source.type.length]  # type: ignore[attr-defined]
    with translate_errors():
        schema.ensure_schema(engine)
        with engine.begin() as conn:
            existing = {
                r.code: Division(
                    r.code, r.name, int(r.level), r.parent_code or "", r.urban_rural_code or None
                )
                for r in conn.execute(
                    select(D.c.code, D.c.name, D.c.level, D.c.parent_code, D.c.urban_rural_code)
                )
            }
            new = [d for d in rows if d.code not in existing]
            changed = [d for d in rows if d.code in existing and existing[d.code] != d]
            with progress("区划 divisions", len(new) + len(changed), "行") as advance:
                if new:
                    conn.execute(insert(D), [_values(d, source) for d in new])
                    advance(len(new))
                if changed:
                    conn.execute(
                        update(D)
                        .where(D.c.code == bindparam("b_code"))
                        .values(
                            name=bindparam("b_name"),
                            level=bindparam("b_level"),
                            parent_code=bindparam("b_parent_code"),
                            urban_rural_code=bindparam("b_urban_rural_code"),
                            source=bindparam("b_source"),
                        ),
                        [{f"b_{k}": v for k, v in _values(d, source).items()} for d in changed],
                    )
                    advance(len(changed))
            imported = conn.execute(select(func.count()).select_from(D)).scalar_one()
    shipped_only = len(set(by_code()) - {d.code for d in rows} - set(existing))
    return DivisionImportResult(
        path,
        sha256,
        rows=len(rows),
        inserted=len(new),
        updated=len(changed),
        unchanged=len(rows) - len(new) - len(changed),
        in_effect=int(imported) + shipped_only,
    )


def _values(d: Division, source: str) -> dict[str, object]:
    return {
        "code": d.code,
        "name": d.name,
        "level": d.level,
        "parent_code": d.parent_code or None,
        "urban_rural_code": d.urban_rural_code,
        "source": source,
    }
