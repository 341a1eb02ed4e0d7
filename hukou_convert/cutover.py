"""The cutover: re-register every person in scope as 居民户口 at the cutoff, keeping the history.

A rehearsal reads only: it takes the same census the real run takes and predicts its result. The real
run takes the live-run lock and converts in batches of keys, its first commit waiting for the census
read beside it (:mod:`run_start`); each batch is one transaction holding the history rows, the update
of the register and its ledger row, so a run killed at any point resumes where its last committed
batch ended (partition by partition, when workers shared it) and ends exactly as an uninterrupted run
would.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    Row,
    func,
    insert,
    select,
    update,
)

from . import schema
from .census import Census, take_census
from .codes import (
    Category,
    Nature,
)
from .conversion import (
    WHOLE,
    RunConversion,
    conversion_expressions,
    conversion_predicate,
    convert_batches,
    convert_window,
    last_batch,
)
from .db import display_url, refresh_statistics, translate_errors
from .errors import (
    Aborted,
    RegisterStateError,
    RunMismatchError,
)
from .findings import Finding
from .fingerprint import Block, register_fingerprint
from .holds import (
    convertible,
    current_holds,
    held_breakdown,
    held_records,
)
from .inflight import (
    Decision,
    decide,
    moved_census,
)
from .instants import format_instant, now
from .partitions import (
    WorkersReport,
    check_workers,
    convert_with_workers,
    done_partition_rows,
    is_partitioned,
    release_started,
)
from .pgrows import rehearsal_state
from .plan import (
    PlanComparison,
    PlanRecorder,
    compare_outcome,
    load_plan,
    plan_document,
)
from .profiles import Profile, ResolvedCutoff
from .progress import Advance, Progress, no_progress
from .register import BUILTIN_REGISTER, RecordKey, RegisterMap
from .run_findings import recorded_findings, store_findings
from .run_start import (
    Confirm,
    CutoverPlan,
    RunRequest,
    gather_findings,
    moves_of,
    outcomes_of,
    start_run,
)
from .runlock import live_run_lock
from .runs import (
    describe_live_run,
    find_run,
    kept_mapping,
    load_census,
    run_codes,
    run_mapping_identity,
    run_profile,
    run_register,
    run_table,
    unfinished_run,
)
from .sqlitefile import file_state

DEFAULT_BATCH_SIZE = 50_000

H = schema.history
RUNS = schema.runs


@dataclass
class CutoverResult:
    rehearsal: bool
    profile: Profile
    cutoff: ResolvedCutoff
    census: Census
    run_id: str | None = None
    outcome: str = "rehearsed"  # rehearsed | completed | resumed | already-complete
    converted: int = 0
    converted_by: Counter[tuple[Nature, Category | None]] = field(default_factory=Counter)
    fingerprint: str = ""  # SHA-256 of the register as read, before any write
    decisions: list[Decision] = field(default_factory=list)  # in-flight 农转非/非转农 business
    # exceptions, for the report (a finished run's: read from the database as gone through)
    findings: Sequence[Finding] = field(default_factory=list)
    batches: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    held: dict[RecordKey, list[str]] = field(default_factory=dict)  # record key -> hold-back codes
    released: int = 0  # held records converted by this invocation, their exception resolved
    plan_path: Path | None = None  # the plan a rehearsal wrote
    plan_comparison: PlanComparison | None = None  # the real run against ``--expect PLAN``
    register: RegisterMap = BUILTIN_REGISTER  # where the register lives
    worker_failures: list[str] = field(default_factory=list)  # what failed workers said

    @property
    def unmapped(self) -> list[Any]:
        return self.census.unmapped()


def rehearse(
    engine: Engine,
    profile: Profile,
    cutoff: ResolvedCutoff,
    progress: Progress = no_progress,
    plan_dir: Path | None = None,
    register: RegisterMap = BUILTIN_REGISTER,
) -> CutoverResult:
    """The dry run: reads the register, writes nothing anywhere in the database. With ``plan_dir``
    it writes the plan a real run can be held to (``run_cutover(expect=…)``)."""
    _require_register(engine, register)
    profile = register.effective_profile(profile)
    started = now()
    recorder = (
        PlanRecorder(plan_dir, f"hukou-plan-{profile.name}-{started:%Y%m%dT%H%M%S}")
        if plan_dir is not None
        else None
    )
    # the SQLite file as found before and after reading: the run may then know it unchanged
    state = file_state(engine) if recorder is not None else None
    try:
        with translate_errors(), engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # one snapshot for the plan: its census, records and fingerprint, and its rows'
                # state (:mod:`pgrows`)
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            decisions = decide(conn, register, profile, profile.codes, cutoff.instant)
            taken = take_census(conn, register, profile)
            census = moved_census(taken, decisions)
            blocks: list[Block] = []
            with progress("指纹 fingerprint", census.total, "行") as advance:
                fingerprint = register_fingerprint(
                    conn, register, advance, on_row=recorder, blocks=blocks
                )
            rows = rehearsal_state(conn, register) if recorder is not None else None
            findings = gather_findings(conn, register, profile, cutoff, decisions, progress)
            held, held_by = held_breakdown(
                conn,
                register,
                profile,
                profile.codes,
                held_records(findings, profile.hold_back),
                moves_of(decisions),
            )
            converted_by = census.to_convert_by() - held_by
            conn.rollback()
        if state is not None and file_state(engine) != state:
            state = None  # written to while read: no one state was read
    except BaseException:
        if recorder is not None:
            recorder.discard()
        raise
    plan_path = None
    if recorder is not None:
        plan_path = recorder.commit(
            plan_document(
                profile=profile.name,
                profile_fingerprint=profile.fingerprint(),
                cutoff=format_instant(cutoff.instant),
                database=display_url(engine.url),
                fingerprint=fingerprint,
                blocks=blocks,
                census=census,
                converted_by=_by_key(converted_by),
                applications=outcomes_of(decisions),
                findings=_finding_keys(findings),
                sqlite_file=None if state is None else (state, register.identity, taken),
                postgresql_rows=None if rows is None else (rows, register.identity),
            )
        )
    return CutoverResult(
        rehearsal=True,
        profile=profile,
        cutoff=cutoff,
        census=census,
        converted=sum(converted_by.values()),
        converted_by=converted_by,
        fingerprint=fingerprint,
        decisions=decisions,
        findings=findings,
        held=held,
        started_at=started,
        finished_at=now(),
        plan_path=plan_path,
        register=register,
    )


def _finding_keys(findings: Sequence[Finding]) -> list[tuple[str, RecordKey | None]]:
    return [(f.code, f.record_id) for f in findings]


def _by_key(converted_by: Counter[tuple[Nature, Category | None]]) -> dict[str, int]:
    return {f"{n.value}/{c.value if c else ''}": v for (n, c), v in converted_by.items()}


def run_cutover(
    engine: Engine,
    profile: Profile,
    cutoff: ResolvedCutoff,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    confirm: Confirm | None = None,
    progress: Progress = no_progress,
    expect: Path | None = None,
    accept_changes: bool = False,
    max_exceptions: int | None = None,
    register: RegisterMap = BUILTIN_REGISTER,
    workers: int = 1,
) -> CutoverResult:
    """The real run, or the continuation of an unfinished one with the same profile and cutoff.

    With ``max_exceptions`` a new run first runs the checks a rehearsal runs and refuses to start
    when they find more exceptions of severity error.

    With ``expect`` (a rehearsal's plan) the run compares before committing anything —
    parameters, census, and every register record — and refuses on a difference unless
    ``accept_changes``; after finishing it compares what it did with what the plan said.

    With ``workers`` > 1 (PostgreSQL, MySQL/MariaDB) the run is cut into partitions that that
    many processes convert side by side (:mod:`partitions`).
    """
    if batch_size < 1 or workers < 1:
        raise ValueError("batch_size and workers must be positive")
    check_workers(engine, workers)
    plan = load_plan(expect) if expect is not None else None
    _require_register(engine, register)
    request = RunRequest(
        register.effective_profile(profile),
        cutoff,
        batch_size,
        confirm,
        progress,
        plan,
        accept_changes,
        max_exceptions,
        register,
        workers,
    )
    with translate_errors():
        schema.ensure_schema(engine)
        with live_run_lock(engine, lambda note: describe_live_run(engine, note)):
            result = _locked_cutover(engine, request)
    if plan is not None and result.plan_comparison is not None:
        result.plan_comparison.after = compare_outcome(
            plan,
            _by_key(result.converted_by),
            outcomes_of(result.decisions),
            _finding_keys(result.findings),
        )
    return result


def _locked_cutover(engine: Engine, req: RunRequest) -> CutoverResult:
    profile, cutoff, register, progress = req.profile, req.cutoff, req.register, req.progress
    comparison = PlanComparison(str(req.plan.path)) if req.plan is not None else None
    with engine.connect() as conn:
        unfinished = unfinished_run(conn)
        completed = next(
            (
                run
                for run in conn.execute(
                    select(RUNS).where(RUNS.c.status == "completed", RUNS.c.profile == profile.name)
                )
                if run_table(run) == register.table_identity
            ),
            None,
        )
    if unfinished is not None and unfinished.status == "rolling_back":
        raise RunMismatchError(
            f"the rollback of run {unfinished.run_id} is unfinished: finish it first with"
            f" 'hukou-convert rollback --run {unfinished.run_id}'"
        )
    if unfinished is not None:
        _check_same_run(unfinished, profile, cutoff, register)
        run_id = str(unfinished.run_id)
        census = load_census(engine, run_id)
        if req.confirm is not None and not req.confirm(
            CutoverPlan(profile, cutoff, census, run_id)
        ):
            raise Aborted("not confirmed: the unfinished run was left as it is")
        with engine.begin() as conn:
            conn.execute(
                update(RUNS)
                .where(RUNS.c.run_id == run_id)
                .values(pid=os.getpid(), host=socket.gethostname()[:100])
            )
        outcome = "resumed"
        started = unfinished.started_at
        if comparison is not None:
            comparison.compared_before = False  # the register is already partly converted
        # the checkpoints are in the batch size the run started with
        conversion = RunConversion(
            run_id, run_codes(engine, run_id), profile, cutoff, int(unfinished.batch_size), register
        )
        with progress("转换 cutover", census.total, "人") as advance:
            converted = _resume(engine, conversion, req.workers, advance)
    elif completed is not None:
        if run_mapping_identity(completed) != register.identity:
            # read through other columns or codes, the run's records would be misread
            kept = kept_mapping(completed)
            source = kept["source"] if kept is not None else "none: the built-in register"
            raise RunMismatchError(
                f"run {completed.run_id} converted this register through another mapping"
                f" ({source}); use that mapping"
            )
        if (
            completed.profile_fingerprint == profile.fingerprint()
            and completed.cutoff == cutoff.instant
        ):
            released = _release_resolved(engine, register, completed, profile, cutoff, progress)
            with engine.connect() as conn:
                completed = conn.execute(
                    select(RUNS).where(RUNS.c.run_id == completed.run_id)
                ).one()
            done = _finished_result(
                engine,
                register,
                completed,
                profile,
                cutoff,
                "released" if released else "already-complete",
            )
            done.released = released
            if released:  # the holds changed: what the run reports changed with them
                store_findings(engine, str(completed.run_id), done.findings)
            if comparison is not None:
                comparison.compared_before = False
            done.plan_comparison = comparison
            return done
        raise RunMismatchError(
            f"run {completed.run_id} already converted the {profile.name} register (cutoff"
            f" {format_instant(completed.cutoff)}, profile fingerprint"
            f" {completed.profile_fingerprint}); a second cutover with other parameters is refused"
        )
    else:
        run_id = _new_run_id()
        started = now()
        outcome = "completed"

    def back_in_service() -> None:
        """The history's indexes, built before the run is complete (the register is back in
        service), and the planner's statistics."""
        with progress("索引 history indexes", None, "个") as advance:
            advance(len(schema.build_history_indexes(engine)))
            refresh_statistics(engine, schema.history, register.table)

    if outcome == "completed":  # a new run: while it finishes reading the register as it was
        converted = start_run(engine, req, run_id, started, comparison, back_in_service)
    else:
        back_in_service()
    with engine.begin() as conn:
        total = conn.execute(
            select(func.coalesce(func.sum(schema.run_batches.c.converted), 0)).where(
                schema.run_batches.c.run_id == run_id
            )
        ).scalar_one()
        conn.execute(
            update(RUNS)
            .where(RUNS.c.run_id == run_id)
            .values(status="completed", finished_at=now(), converted=int(total))
        )
    with engine.connect() as conn:
        row = conn.execute(select(RUNS).where(RUNS.c.run_id == run_id)).one()
    result = _finished_result(engine, register, row, profile, cutoff, outcome)
    store_findings(engine, run_id, result.findings)
    result.batches = converted.batches
    result.worker_failures = converted.failures
    result.started_at = started
    result.plan_comparison = comparison
    return result


def _resume(
    engine: Engine, conversion: RunConversion, workers: int, advance: Advance
) -> WorkersReport:
    """An unfinished run's remaining batches: its pending partitions if it was split, by as many
    workers as asked; else from its last batch on."""
    with engine.connect() as conn:
        partitioned = is_partitioned(conn, conversion.run_id)
        if not partitioned:
            return WorkersReport(convert_batches(conn, conversion, WHOLE, advance))
        release_started(engine, conversion.run_id)
        advance(done_partition_rows(conn, conversion))
    return convert_with_workers(engine, conversion, workers, advance)


def _check_same_run(
    run: Row[Any], profile: Profile, cutoff: ResolvedCutoff, register: RegisterMap
) -> None:
    differences = []
    # the same mapping content, from whatever file: a resume reads the same columns
    if run_mapping_identity(run) != register.identity:
        kept = kept_mapping(run)
        differences.append(
            "the built-in register" if kept is None else f"the register of mapping {kept['source']}"
        )
    if run.profile != profile.name or run.profile_fingerprint != profile.fingerprint():
        differences.append(f"profile {run.profile} (fingerprint {run.profile_fingerprint})")
    if run.cutoff != cutoff.instant:
        differences.append(f"cutoff {format_instant(run.cutoff)}")
    if differences:
        raise RunMismatchError(
            f"run {run.run_id} is unfinished with {' and '.join(differences)}; continue it with the"
            " same --profile and --cutoff (a resume with other parameters is refused)"
        )


def _finished_result(
    engine: Engine,
    register: RegisterMap,
    run: Row[Any],
    profile: Profile,
    cutoff: ResolvedCutoff,
    outcome: str,
    recorded: Sequence[Finding] | None = None,
    decide_now: bool = True,
) -> CutoverResult:
    """What a finished run did; its findings are ``recorded`` ones, or found again now."""
    run_id = str(run.run_id)
    census = load_census(engine, run_id)
    with engine.connect() as conn:
        by: Counter[tuple[Nature, Category | None]] = Counter()
        for nature, category, n in conn.execute(
            select(H.c.original_nature, H.c.household_category, func.count())
            .where(H.c.run_id == run_id)
            .group_by(H.c.original_nature, H.c.household_category)
        ):
            by[(Nature(nature), Category(category) if category else None)] += int(n)
        decisions = (
            decide(conn, register, profile, census.codes, cutoff.instant) if decide_now else []
        )
        findings = (
            recorded
            if recorded is not None
            else gather_findings(conn, register, profile, cutoff, decisions)
        )
        held = current_holds(conn, register, run_id)
    return CutoverResult(
        rehearsal=False,
        profile=profile,
        cutoff=cutoff,
        census=census,
        run_id=run_id,
        outcome=outcome,
        converted=int(run.converted or 0),
        converted_by=by,
        fingerprint=str(run.register_sha256 or ""),
        decisions=decisions,
        findings=findings,
        held=held,
        started_at=run.started_at,
        finished_at=run.finished_at,
        register=register,
    )


def _new_run_id() -> str:
    return f"R{now():%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


def _release_resolved(
    engine: Engine,
    register: RegisterMap,
    run: Row[Any],
    profile: Profile,
    cutoff: ResolvedCutoff,
    progress: Progress,
) -> int:
    """Convert, within the same run, held records whose hold-back exceptions are resolved."""
    run_id = str(run.run_id)
    with engine.connect() as conn:
        held = current_holds(conn, register, run_id)
        if not held:
            return 0
        decisions = decide(conn, register, profile, profile.codes, cutoff.instant)
        still = held_records(
            gather_findings(conn, register, profile, cutoff, decisions, progress),
            profile.hold_back,
        )
    resolved = register.sorted_keys(k for k in held if k not in still)
    if not resolved:
        return 0
    codes = run_codes(engine, run_id)
    with engine.begin() as conn:
        # Resolved by making the record no longer one to convert (a duplicate cancelled, say):
        # dropped from the hold, never marked as converted.
        to_convert = convertible(conn, register, profile, codes, resolved)
        dropped = [k for k in resolved if k not in to_convert]
        for start in range(0, len(dropped), 1_000):
            conn.execute(
                update(schema.run_holds)
                .where(
                    schema.run_holds.c.run_id == run_id,
                    register.ours(schema.run_holds).in_(dropped[start : start + 1_000]),
                    schema.run_holds.c.state == "held",
                )
                .values(state="dropped", released_at=now())
            )
    resolved = register.sorted_keys(to_convert)
    exprs = conversion_expressions(codes, register)
    scope_pred = conversion_predicate(register, run_id, exprs[0], profile)
    B = schema.run_batches
    released = 0
    for start in range(0, len(resolved), 1_000):
        keys = resolved[start : start + 1_000]
        with engine.begin() as conn:
            conn.execute(
                update(schema.run_holds)
                .where(
                    schema.run_holds.c.run_id == run_id,
                    register.ours(schema.run_holds).in_(keys),
                    schema.run_holds.c.state == "held",
                )
                .values(state="released", released_at=now())
            )
            last = last_batch(conn, run_id)
            batch_no = int(last.batch_no) if last is not None else 0
            converted = convert_window(
                conn,
                register,
                run_id,
                exprs,
                scope_pred,
                cutoff,
                register.key_column.in_(keys),
                batch_no + 1,
            )
            conn.execute(
                insert(B).values(
                    run_id=run_id,
                    batch_no=batch_no + 1,
                    first_key="released",  # a release batch: the key window is unchanged
                    last_key=last.last_key if last is not None else None,
                    converted=converted,
                    committed_at=now(),
                )
            )
            conn.execute(
                update(RUNS)
                .where(RUNS.c.run_id == run_id)
                .values(converted=RUNS.c.converted + converted)
            )
        released += converted
    return released


# ---------------------------------------------------------------- queries about runs


def _require_register(engine: Engine, register: RegisterMap) -> None:
    if not register.builtin:
        return  # the mapping was validated against the database when it was loaded
    with translate_errors():
        if not schema.has_register(engine):
            raise RegisterStateError(
                "this database holds no register: load one with 'hukou-convert import FILE' first"
            )


def load_run_result(
    engine: Engine, run_id: str | None, *, with_findings: bool = True
) -> CutoverResult:
    """The result of a finished real run (default: the latest), rebuilt from what the run recorded:
    for writing its report again later. ``with_findings=False``: without its exceptions and
    in-flight decisions (an area's detail workbook needs neither)."""
    run = find_run(engine, run_id)
    if run.status != "completed":
        raise RegisterStateError(
            f"run {run.run_id} is unfinished (status {run.status}): continue it first"
        )
    profile = run_profile(engine, run)
    cutoff = ResolvedCutoff(run.cutoff, str(run.cutoff_source or "recorded with the run"))
    recorded: Sequence[Finding] | None = (
        recorded_findings(engine, str(run.run_id)) if with_findings else []
    )
    register = run_register(engine, run)
    return _finished_result(
        engine, register, run, profile, cutoff, "completed", recorded, decide_now=with_findings
    )
