"""What a finished run reported, kept in ``hukou_run_findings``: its report is written again later
from what the run found, not from the register as it is by then."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, overload

from sqlalchemy import Engine, delete, func, insert, select

from . import schema
from .db import translate_errors
from .findings import Finding

_FINDINGS_MARK = "(recorded)"
_CHUNK_ROWS = 5_000  # rows written, and read, at a time


def store_findings(engine: Engine, run_id: str, findings: Sequence[Finding]) -> None:
    """Record what a finished run reported (after its commit, in one transaction of its own),
    replacing what it recorded before: ``load_run_result`` reads it back. Written a chunk of rows
    at a time, never all of them as rows at once."""
    F = schema.run_findings
    mark: dict[str, Any] = {
        "run_id": run_id,
        "seq": 0,
        "code": _FINDINGS_MARK,
        "category": "",
        "severity": "",
        "record_id": None,
        "record_key": None,
        "id_number": None,
        "name": None,
        "explanation": f"{len(findings)} findings",
        "action": "",
        "upgraded_id": None,
    }
    rows = (
        {
            "run_id": run_id,
            "seq": i,
            "code": f.code,
            "category": f.category,
            "severity": f.severity,
            # an integer key (the built-in register), or a legacy table's text key
            "record_id": f.record_id if isinstance(f.record_id, int) else None,
            "record_key": f.record_id if isinstance(f.record_id, str) else None,
            "id_number": f.id_number,
            "name": f.name,
            "explanation": f.explanation,
            "action": f.action,
            "upgraded_id": f.upgraded_id,
        }
        for i, f in enumerate(findings, start=1)
    )
    with translate_errors():
        schema.ensure_schema(engine)
        with engine.begin() as conn:
            conn.execute(delete(F).where(F.c.run_id == run_id))
            conn.execute(insert(F), [mark])
            while chunk := list(itertools.islice(rows, _CHUNK_ROWS)):
                conn.execute(insert(F), chunk)


class StoredFindings(Sequence[Finding]):
    """The findings a run recorded, read from the database each time they are gone through, a
    batch of rows at a time: a city's can number hundreds of thousands, and its report lists
    them without holding them (PostgreSQL, 5M persons: 29,316 findings, 30 MB of the report's
    memory). ``len()`` is counted once, when the run is loaded: a run's record is written once,
    at its end (a re-run of a completed run releasing holds writes it again). Never pass one to
    :func:`store_findings` for its own run: the record would be read while it is replaced."""

    def __init__(self, engine: Engine, run_id: str, count: int) -> None:
        self._engine = engine
        self._run_id = run_id
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Finding]:
        F = schema.run_findings
        query = select(F).where(F.c.run_id == self._run_id, F.c.seq > 0).order_by(F.c.seq)
        with translate_errors(), self._engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=_CHUNK_ROWS).execute(query)
            try:
                yield from map(_finding, rows)
            finally:
                rows.close()  # left early: the rest of the result is let go of before the connection

    @overload
    def __getitem__(self, index: int) -> Finding: ...

    @overload
    def __getitem__(self, index: slice) -> list[Finding]: ...

    def __getitem__(self, index: int | slice) -> Finding | list[Finding]:
        if isinstance(index, slice):
            return list(self)[index]  # the whole list: no path of the tool's own takes a slice
        at = index + self._count if index < 0 else index
        if not 0 <= at < self._count:
            raise IndexError("finding index out of range")
        F = schema.run_findings
        with translate_errors(), self._engine.connect() as conn:
            row = conn.execute(
                select(F).where(F.c.run_id == self._run_id, F.c.seq == at + 1)
            ).one_or_none()  # recorded as 1, 2, 3… after the mark
        if row is None:  # recorded again, shorter, since the run was loaded
            raise IndexError("finding index out of range")
        return _finding(row)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StoredFindings | list | tuple):
            # as read now, not by the lengths counted when each was loaded
            end = object()
            return all(a == b for a, b in itertools.zip_longest(self, other, fillvalue=end))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compared by content, as a list is


def _finding(r: Any) -> Finding:
    return Finding(
        code=r.code,
        category=r.category,
        severity=r.severity,
        record_id=int(r.record_id) if r.record_id is not None else r.record_key,
        id_number=r.id_number,
        name=r.name,
        explanation=r.explanation,
        action=r.action,
        upgraded_id=r.upgraded_id,
    )


def recorded_findings(engine: Engine, run_id: str) -> StoredFindings | None:
    """The findings a run recorded, in its order, read as they are gone through; None for a run
    that recorded none (an older version, or killed between its commit and the record)."""
    F = schema.run_findings
    if F.name in schema.missing_tables(engine):
        return None
    with translate_errors(), engine.connect() as conn:
        first, recorded = conn.execute(
            select(func.min(F.c.seq), func.count()).where(F.c.run_id == run_id)
        ).one()
    if not recorded or first != 0:
        return None
    return StoredFindings(engine, run_id, int(recorded) - 1)  # less the mark
