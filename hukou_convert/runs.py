"""Runs as recorded in ``hukou_runs``: finding them, who holds the lock, what they kept."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Connection, Engine, Row, select

from . import schema
from .census import Census, CensusLine
from .codes import CodeTable, code_table_from_json
from .db import translate_errors
from .errors import RegisterStateError
from .instants import format_instant
from .mapping import mapping_identity, register_from_json
from .profiles import BUILTIN_PROFILES, Profile
from .register import BUILTIN_REGISTER, RegisterMap

RUNS = schema.runs
LIVE_STATUSES = ("running", "rolling_back")  # a run in one of these holds work to finish


def run_codes(on: Engine | Connection, run_id: str) -> CodeTable:
    """The code table a run converts with, as the run recorded it (``on`` a connection: within
    its transaction, the run's own uncommitted first one included)."""
    query = select(RUNS.c.code_table).where(RUNS.c.run_id == run_id)
    if isinstance(on, Connection):
        return code_table_from_json(on.execute(query).scalar_one())
    with on.connect() as conn:
        return code_table_from_json(conn.execute(query).scalar_one())


def load_census(engine: Engine, run_id: str) -> Census:
    """The census a run took before its first write, with the code table it used."""
    codes = run_codes(engine, run_id)
    C = schema.run_census
    with engine.connect() as conn:
        lines = [
            CensusLine(
                bool(r.in_scope), bool(r.active), r.raw_code, r.category_label, int(r.records)
            )
            for r in conn.execute(select(C).where(C.c.run_id == run_id).order_by(C.c.line))
        ]
    return Census(lines, codes)


def describe_live_run(engine: Engine, lock_note: str | None = None, wait: float = 3.0) -> str:
    """Who holds the live-run lock: its run as the runs table tells, waiting ``wait`` seconds for a
    holder that started at the same moment to record it; else what the lock itself tells."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with engine.connect() as conn:
                row = conn.execute(
                    select(
                        RUNS.c.run_id, RUNS.c.profile, RUNS.c.pid, RUNS.c.host, RUNS.c.started_at
                    )
                    .where(RUNS.c.status.in_(LIVE_STATUSES))
                    .order_by(RUNS.c.started_at.desc())
                    .limit(1)
                ).first()
        except Exception:
            row = None
        if row is not None:
            return (
                f"run {row.run_id} (profile {row.profile}, pid {row.pid} on {row.host},"
                f" started {format_instant(row.started_at)})"
            )
        if time.monotonic() >= deadline:
            held_by = lock_note or "another hukou-convert process"
            return f"{held_by} (no run recorded: an import, or a cutover still taking its census)"
        time.sleep(0.2)


def find_run(engine: Engine, run_id: str | None) -> Row[Any]:
    """A run by id, or the latest one."""
    with translate_errors(), engine.connect() as conn:
        if "hukou_runs" in schema.missing_tables(engine):
            raise RegisterStateError("no cutover has run on this database")
        query = select(RUNS)
        if run_id is not None:
            query = query.where(RUNS.c.run_id == run_id)
        else:
            query = query.order_by(RUNS.c.started_at.desc()).limit(1)
        row = conn.execute(query).first()
    if row is None:
        raise RegisterStateError(
            f"no run {run_id!r} in this database"
            if run_id
            else "no cutover has run on this database"
        )
    return row


def unfinished_run(conn: Connection) -> Row[Any] | None:
    """The run that holds work to finish (a cutover or a rollback interrupted), if any."""
    return conn.execute(select(RUNS).where(RUNS.c.status.in_(LIVE_STATUSES))).first()


def run_profile(engine: Engine, run: Row[Any]) -> Profile:
    """The profile a run used: the built-in one if unchanged, else what the run kept of its file
    (all of it: scope, code table, freeze, hold-back, names)."""
    builtin = BUILTIN_PROFILES.get(str(run.profile))
    if builtin is not None and builtin.fingerprint() == run.profile_fingerprint:
        return builtin
    if run.profile_json:
        return Profile.from_json(str(run.profile_json), run_codes(engine, str(run.run_id)))
    return Profile(
        name=str(run.profile),
        display_name="",
        policy_document="(profile file; not kept with the run)",
        scope=tuple(str(run.scope).split(",")),
        codes=run_codes(engine, str(run.run_id)),
        active_statuses=tuple(str(run.active_statuses).split(",")),
    )


def run_register(engine: Engine, run: Row[Any]) -> RegisterMap:
    """The register a run converted: the built-in one, or the legacy table its mapping named
    (validated against the database again, so a renamed column is an error, not a wrong answer)."""
    if run.register_mapping is None:
        return BUILTIN_REGISTER
    return register_from_json(engine, str(run.register_mapping))


def kept_mapping(run: Row[Any]) -> dict[str, Any] | None:
    """What a run kept of the mapping it converted through: its source, content and table (None:
    the built-in register)."""
    if run.register_mapping is None:
        return None
    kept: dict[str, Any] = json.loads(run.register_mapping)
    return kept


def run_table(run: Row[Any]) -> str | None:
    """The register table a run converted, as its mapping names it (None: the built-in one)."""
    kept = kept_mapping(run)
    return None if kept is None else str(kept["table"])


def run_mapping_identity(run: Row[Any]) -> str | None:
    """The content identity of the mapping a run converted through (None: the built-in register),
    to compare with :attr:`RegisterMap.identity`."""
    kept = kept_mapping(run)
    return None if kept is None else mapping_identity(kept["mapping"])


def completed_run(engine: Engine, run_id: str | None) -> Row[Any]:
    """A completed run by id, or the latest completed one (reports after the cutover read it)."""
    if run_id is not None:
        run = find_run(engine, run_id)
        if run.status != "completed":
            raise RegisterStateError(
                f"run {run.run_id} is not a completed cutover (status {run.status})"
            )
        return run
    find_run(engine, None)  # no runs table or no run at all: say so
    with translate_errors(), engine.connect() as conn:
        row = conn.execute(
            select(RUNS)
            .where(RUNS.c.status == "completed")
            .order_by(RUNS.c.started_at.desc())
            .limit(1)
        ).first()
    if row is None:
        raise RegisterStateError("no completed cutover run in this database")
    return row
