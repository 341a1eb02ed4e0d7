"""What a finished run reported, kept in ``hukou_run_findings``: its report is written again later
from what the run found, not from the register as it is by then."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, insert, select

from . import schema
from .db import translate_errors
from .findings import Finding

_FINDINGS_MARK = "(recorded)"


def store_findings(engine: Engine, run_id: str, findings: list[Finding]) -> None:
    """Record what a finished run reported (after its commit, in one transaction of its own),
    replacing what it recorded before: ``load_run_result`` reads it back."""
    F = schema.run_findings
    rows: list[dict[str, Any]] = [
        {
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
    ]
    rows.extend(
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
            for start in range(0, len(rows), 5_000):
                conn.execute(insert(F), rows[start : start + 5_000])


def recorded_findings(engine: Engine, run_id: str) -> list[Finding] | None:
    """The findings a run recorded, in its order; None for a run that recorded none (an older
    version, or killed between its commit and the record)."""
    F = schema.run_findings
    if F.name in schema.missing_tables(engine):
        return None
    with translate_errors(), engine.connect() as conn:
        rows = conn.execute(select(F).where(F.c.run_id == run_id).order_by(F.c.seq)).all()
    if not rows or rows[0].seq != 0:
        return None
    return [
        Finding(
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
        for r in rows[1:]
    ]
