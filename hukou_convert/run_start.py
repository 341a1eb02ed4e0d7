"""A new run: what it decides before converting (in-flight applications, records held back, the
operator's confirmation, a plan's parameters), its first transaction (the run, the applications'
outcomes, the holds, the partitions), and the conversion beside the reading of the register as it
was: the first commit waits for that reading's verdict (:mod:`prewrite`), and with workers the
partitions left after it are theirs (:mod:`partitions`).
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Connection,
    Engine,
    func,
    insert,
    select,
    update,
)

from . import __version__, schema
from .census import Census, take_census
from .checks import run_checks
from .codes import (
    code_table_to_json,
)
from .conversion import (
    CommitGate,
    RunConversion,
    convert_batches,
)
from .db import display_url, translate_errors
from .errors import (
    Aborted,
    PlanMismatchError,
    RegisterStateError,
    TooManyExceptionsError,
    UnmappedCodesError,
)
from .findings import Finding
from .holds import (
    held_breakdown,
    held_records,
    store_holds,
    with_hold_actions,
)
from .inflight import (
    Decision,
    Outcome,
    apply_decisions,
    decide,
    late_changes,
    moved_census,
)
from .instants import format_instant
from .partitions import (
    Workers,
    WorkersReport,
    mark_done,
    mark_started,
    partition_ranges,
    store_partitions,
)
from .plan import (
    Difference,
    Plan,
    PlanComparison,
    compare_applications,
    compare_census,
    compare_parameters,
)
from .prewrite import PlanReading, ReadingBeside, RegisterReading, read_register
from .profiles import Profile, ResolvedCutoff
from .progress import Progress, no_progress
from .register import RecordKey, RegisterMap
from .runs import (
    run_codes,
)
from .sqlitefile import file_state, open_database

RUNS = schema.runs


@dataclass
class CutoverPlan:
    """What the real run is about to do: shown to the operator before anything is written."""

    profile: Profile
    cutoff: ResolvedCutoff
    census: Census
    resuming_run: str | None
    held: int = 0  # records held back for review: not converted now


Confirm = Callable[[CutoverPlan], bool]


def moves_of(decisions: list[Decision]) -> dict[RecordKey, str]:
    """Register codes that approved applications change before the conversion."""
    return {
        d.record_id: d.to_code
        for d in decisions
        if d.outcome is Outcome.APPLIED and d.to_code and d.record_id is not None and not d.stored
    }


def outcomes_of(decisions: list[Decision]) -> dict[str, str]:
    return {d.application_id: d.outcome.value for d in decisions}


@dataclass(frozen=True)
class RunRequest:
    """What the operator asked the real run to do."""

    profile: Profile
    cutoff: ResolvedCutoff
    batch_size: int
    confirm: Confirm | None
    progress: Progress
    plan: Plan | None
    accept_changes: bool
    max_exceptions: int | None
    register: RegisterMap
    workers: int


def start_run(
    engine: Engine,
    req: RunRequest,
    run_id: str,
    started: datetime,
    comparison: PlanComparison | None,
    back_in_service: Callable[[], None],
) -> WorkersReport:
    """A new run: everything it decides before converting, then the conversion beside the reading
    of the register as it was (census, the plan's records, fingerprint); the first commit waits
    for that reading's verdict. With workers, the partitions left after that first commit are
    theirs. Once they are converted, ``back_in_service()`` (the history's indexes) runs while
    the fingerprint is read from the snapshot."""
    profile, cutoff, register, progress, plan = (
        req.profile,
        req.cutoff,
        req.register,
        req.progress,
        req.plan,
    )
    with engine.connect() as conn:
        decisions = decide(conn, register, profile, profile.codes, cutoff.instant)
        # what the operator confirms: counted now (the run counts again, beside its conversion)
        predicted = (
            moved_census(take_census(conn, register, profile), decisions)
            if req.confirm is not None
            else None
        )
    if predicted is not None and predicted.unmapped():
        raise UnmappedCodesError(predicted.unmapped(), rehearsal=False)
    held: dict[RecordKey, list[str]] = {}
    if req.max_exceptions is not None or profile.hold_back:
        with engine.connect() as conn:
            found = gather_findings(conn, register, profile, cutoff, decisions, progress)
            held, _ = held_breakdown(
                conn,
                register,
                profile,
                profile.codes,
                held_records(found, profile.hold_back),
                moves_of(decisions),
            )
        if req.max_exceptions is not None:
            errors = Counter(f.code for f in found if f.severity == "error")
            if sum(errors.values()) > req.max_exceptions:
                raise TooManyExceptionsError(sum(errors.values()), req.max_exceptions, dict(errors))
    if (
        req.confirm is not None
        and predicted is not None
        and not req.confirm(CutoverPlan(profile, cutoff, predicted, None, held=len(held)))
    ):
        raise Aborted("not confirmed: nothing was written")
    parameters: list[Difference] = []
    differs = False  # in its parameters or its applications' outcomes, from the plan
    if plan is not None:
        parameters = compare_parameters(
            plan, profile.name, profile.fingerprint(), format_instant(cutoff.instant)
        )
        differs = bool(parameters or compare_applications(plan, outcomes_of(decisions)))
        if differs and not req.accept_changes:
            # a run to be refused: the whole list of differences is read, nothing written
            with engine.connect() as conn:
                reading = read_register(conn, register, profile, plan, progress)
            judge(
                reading.census,
                reading,
                decisions,
                decisions,
                plan,
                comparison,
                parameters,
                req.accept_changes,
            )
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(register.table)).scalar_one())
        ranges = partition_ranges(conn, register, total, req.workers)
    # held to a plan on the SQLite file the rehearsal read, unchanged since: nothing to read
    kept = (
        plan.sqlite_file(register, profile.codes, bool(register.resident_by_category))
        if plan is not None and not differs
        else None
    )
    unchanged = kept[0] if kept is not None and file_state(engine) == kept[0] else None
    deferral = schema.defer_history_indexes(engine)
    report = WorkersReport()
    gate: CommitGate | None = None
    # open before the write lock and closed only once it is released: closing any descriptor
    # of the file releases every POSIX lock this process holds on it, SQLite's included
    database = open_database(engine) if unchanged is not None else None
    try:
        if unchanged is not None:
            # the file after the drops: only they were committed meanwhile (one each)
            after = file_state(engine, fd=database) if database is not None else None
            if after is None or after.change_counter != unchanged.change_counter + deferral.drops:
                after = None
            unchanged = after
        beside: ReadingBeside | PlanReading = (
            PlanReading(kept[1], str(plan.data.get("register_sha256", "")))
            if unchanged is not None and kept is not None and plan is not None
            else ReadingBeside(engine, register, profile, plan, progress)
        )
        if comparison is not None:
            comparison.unchanged_file = unchanged is not None
        with beside as reading_beside, engine.connect() as conn:
            if unchanged is not None:
                # the write lock, and then the file as the drops left it: else someone wrote
                # between (the run stops, nothing written; run again: it reads the register)
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                if file_state(engine, writing=True, fd=database) != unchanged:
                    raise RegisterStateError(
                        "the register was written to as the run started: nothing was written;"
                        " run the same command again (it reads the register against the plan)"
                    )
            applied = record_run(
                conn, register, run_id, profile, cutoff, decisions, held, req.batch_size, started
            )
            if len(ranges) > 1:
                store_partitions(conn, run_id, ranges)

            def seal() -> None:
                if plan is not None:  # held to a plan: every record compared before committing
                    reading = reading_beside.result()
                    taken, fingerprint = reading.census, reading.fingerprint
                else:
                    taken, fingerprint, reading = reading_beside.census(), None, None
                census = judge(
                    taken,
                    reading,
                    applied,
                    decisions,
                    plan,
                    comparison,
                    parameters,
                    req.accept_changes,
                )
                store_census(conn, run_id, census, fingerprint)

            gate = CommitGate(
                reading_beside.done if plan is not None else reading_beside.census_taken, seal
            )
            conversion = RunConversion(
                run_id, run_codes(conn, run_id), profile, cutoff, req.batch_size, register
            )
            with progress("转换 cutover", total, "人") as advance, ExitStack() as stack:
                # started now, they wait for the run's first commit
                workers = (
                    stack.enter_context(Workers(engine, run_id, req.workers, advance))
                    if len(ranges) > 1
                    else None
                )
                if workers is not None:
                    gate.when_open(workers.let_go)
                # this process converts until the run's first commit (and to the end of the
                # partition it is in); the workers take the partitions left from that commit on
                for part in ranges:
                    if gate.open and len(ranges) > 1:
                        break
                    if len(ranges) > 1:  # no worker claims it once the first commit is made
                        mark_started(conn, run_id, part)
                    report.batches += convert_batches(conn, conversion, part, advance, gate)
                    if len(ranges) > 1:
                        mark_done(conn, run_id, part)
                    gate.commit(conn)
                gate.commit(conn, force=True)  # every batch done before the verdict: wait for it
                if workers is not None:
                    shared = workers.convert(conversion)
                    report.batches += shared.batches
                    report.failures += shared.failures
            # the register is back in service; the fingerprint is read from the snapshot
            reading_beside.release()
            back_in_service()
            store_fingerprint(conn, run_id, reading_beside.finish().fingerprint)
            conn.commit()
            return report
    except BaseException:
        if (deferral.deferred or deferral.drops) and (gate is None or not gate.open):
            # nothing was committed: the history is as empty as it was, with its indexes
            with translate_errors():
                schema.build_history_indexes(engine)
        raise
    finally:
        if database is not None:
            os.close(database)


def judge(
    taken: Census,
    reading: RegisterReading | None,
    applied: list[Decision],
    decisions: list[Decision],
    plan: Plan | None,
    comparison: PlanComparison | None,
    parameters: list[Difference],
    accept_changes: bool,
) -> Census:
    """The verdict on the register as read before the run: its census as of the cutoff (the
    census ``taken`` with the ``applied`` applications applied), refused when it holds unmapped
    codes; compared with the plan, if any (``reading``: every record), refused on a difference
    unless ``accept_changes``."""
    census = moved_census(taken, applied)
    unmapped = census.unmapped()
    if unmapped:
        raise UnmappedCodesError(unmapped, rehearsal=False)
    if plan is None or comparison is None or reading is None:
        return census
    comparison.before = (
        parameters
        + compare_census(plan, census)
        + compare_applications(plan, outcomes_of(decisions))
        + reading.record_differences
    )
    comparison.record_differences = reading.record_difference_count
    comparison.unchanged_rows = reading.unchanged_rows
    if comparison.before:
        if not accept_changes:
            shown = len(reading.record_differences)
            total = len(comparison.before) - shown + reading.record_difference_count
            raise PlanMismatchError(
                str(plan.path), [describe_difference(d) for d in comparison.before], total
            )
        comparison.accepted = True
    return census


def describe_difference(d: Difference) -> str:
    if d.kind == "record":
        return f"record {d.key}: {d.actual}"
    return f"{d.kind} {d.key}: rehearsal {d.expected}, now {d.actual}"


def record_run(
    conn: Connection,
    register: RegisterMap,
    run_id: str,
    profile: Profile,
    cutoff: ResolvedCutoff,
    decisions: list[Decision],
    held: dict[RecordKey, list[str]],
    batch_size: int,
    started: datetime,
) -> list[Decision]:
    """The run's first writes, in its first transaction: the run, the outcome of every in-flight
    application (approved ones applied to the register) and the records held back. Returns the
    applications that changed a record. The census and the fingerprint join them before the
    transaction commits (:func:`store_census`)."""
    conn.execute(
        insert(RUNS).values(
            run_id=run_id,
            profile=profile.name,
            profile_fingerprint=profile.fingerprint(),
            scope=",".join(profile.scope),
            active_statuses=",".join(profile.active_statuses),
            code_table=code_table_to_json(profile.codes),
            profile_json=profile.to_json(),
            cutoff=cutoff.instant,
            cutoff_source=cutoff.source[:200],
            register_sha256=None,
            register_mapping=register.mapping_json,
            status="running",
            batch_size=batch_size,
            started_at=started,
            tool_version=__version__,
            database_url=display_url(conn.engine.url)[:400],
            host=socket.gethostname()[:100],
            pid=os.getpid(),
        )
    )
    applied = apply_decisions(conn, register, run_id, decisions)
    store_holds(conn, register, run_id, held, profile, profile.codes)
    return applied


def store_census(conn: Connection, run_id: str, census: Census, fingerprint: str | None) -> None:
    """The census as of the cutoff that verify checks against, and the register's fingerprint as
    read before the first write when already known: in the run's first transaction."""
    if census.lines:
        conn.execute(
            insert(schema.run_census),
            [
                {
                    "run_id": run_id,
                    "line": i,
                    "in_scope": int(line.in_scope),
                    "active": int(line.active),
                    "raw_code": line.raw_code,
                    "category_label": line.category_label,
                    "records": line.records,
                }
                for i, line in enumerate(census.lines, start=1)
            ],
        )
    if fingerprint is not None:
        store_fingerprint(conn, run_id, fingerprint)


def store_fingerprint(conn: Connection, run_id: str, fingerprint: str) -> None:
    conn.execute(update(RUNS).where(RUNS.c.run_id == run_id).values(register_sha256=fingerprint))


def gather_findings(
    conn: Connection,
    register: RegisterMap,
    profile: Profile,
    cutoff: ResolvedCutoff,
    decisions: list[Decision],
    progress: Progress = no_progress,
) -> list[Finding]:
    """Every exception the report lists: the register checks (错、重、假、漏), in-flight business,
    and changes during the freeze. The checks read fields the conversion does not change, so a
    rehearsal and the run after it report the same records."""
    findings = list(
        run_checks(
            conn, profile, cutoff=cutoff.instant, progress=progress, register=register
        ).findings
    )
    findings.extend(d.finding() for d in decisions)
    findings.extend(late_changes(conn, register, profile))
    return with_hold_actions(findings, profile.hold_back)
