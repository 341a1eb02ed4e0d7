"""The commands of the night: cutover (and its rehearsal), verify, report, rollback."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click

from .cli import (
    App,
    F,
    ask_to_write,
    cli,
    db_option,
    mapping_option,
    out_dir_option,
    pass_app,
    profile_options,
    quiet_option,
)
from .codes import CATEGORY_LABELS, NATURE_LABELS
from .cutover import DEFAULT_BATCH_SIZE, CutoverResult
from .db import display_url
from .errors import (
    PlanDifferedError,
    UnmappedCodesError,
    UsageError,
    VerificationFailed,
)
from .instants import format_instant
from .partitions import join_run
from .plan import PlanComparison
from .profiles import load_profile, resolve_cutoff
from .rollback import rollback_run
from .run_start import CutoverPlan
from .runbook import cutover_and_report
from .tallies import AreaLevel
from .verify import verify_run
from .workbook import WorkbookResult, rewrite_report


def split_options(f: F) -> F:
    f = click.option(
        "--processes",
        type=click.IntRange(min=1),
        default=os.cpu_count() or 1,
        show_default="this machine's cores",
        help="With --split-by: area workbooks written at a time, one process each.",
    )(f)
    return click.option(
        "--split-by",
        type=click.Choice(["county", "township"]),
        help="Write the 变更明细 as one workbook per area (the unit auditors sign off), in"
        " parallel, and the city workbook without it (the real run's workbooks).",
    )(f)


def batch_size_option(unit: str) -> Callable[[F], F]:
    return click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=DEFAULT_BATCH_SIZE,
        show_default=True,
        help=f"{unit} per transaction (each batch is a checkpoint to resume from).",
    )


@cli.command("cutover")
@profile_options
@click.option("--dry-run", "dry_run", is_flag=True, help="Rehearse: write nothing to the database.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation before writing.")
@batch_size_option("Records")
@out_dir_option("reports")
@split_options
@click.option(
    "--unmasked",
    is_flag=True,
    help="Write full ID numbers and names into the audit workbook (masked by default).",
)
@click.option(
    "--expect",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PLAN",
    help="A rehearsal's plan (.json): compared before writing anything and after finishing.",
)
@click.option(
    "--accept-changes",
    is_flag=True,
    help="With --expect: go ahead although the register changed since the rehearsal.",
)
@click.option(
    "--max-exceptions",
    type=click.IntRange(min=0),
    metavar="N",
    help="Refuse to start when the checks find more than N exceptions of severity error.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes converting side by side (PostgreSQL, MySQL/MariaDB): the run is cut into"
    " partitions they claim one at a time; more can join from other machines"
    " ('hukou-convert join').",
)
@mapping_option
@db_option
@quiet_option
@pass_app
def cutover_command(
    app: App,
    profile_name: str,
    cutoff: str | None,
    force_cutoff: bool,
    dry_run: bool,
    yes: bool,
    batch_size: int,
    out: Path,
    unmasked: bool,
    expect: Path | None,
    accept_changes: bool,
    max_exceptions: int | None,
    split_by: AreaLevel | None,
    processes: int,
    workers: int,
) -> None:
    """Re-register every active person in scope as 居民户口 at the cutoff.

    With --dry-run this is the rehearsal: the same census and counts as the real run, nothing
    written to the database; it writes its plan beside the workbook. The real run asks for
    confirmation (unless --yes), holds the database's live-run lock, and can be re-run after any
    interruption: it continues the same run. With --expect PLAN it refuses to start on a register
    that changed since that rehearsal (unless --accept-changes) and shows what changed.

    Both write the audit workbook (xlsx, personal data masked unless --unmasked) into --out.

    With --mapping FILE the register is a legacy table converted in place (its own column names
    and codes); verify, report and rollback later find it through the run.
    """
    if dry_run and (
        expect or accept_changes or max_exceptions is not None or split_by or workers > 1
    ):
        raise UsageError(
            "--expect, --accept-changes, --max-exceptions, --split-by and --workers are for the"
            " real run"
        )
    profile = load_profile(profile_name)
    resolved = resolve_cutoff(profile, cutoff, force_cutoff)
    engine = app.engine()
    register = app.register()
    where = display_url(engine.url)
    if not register.builtin:
        where = f"table {register.display_name} of {where}"

    def confirm(plan: CutoverPlan) -> bool:
        if yes:
            return True
        what = (
            f"Continue unfinished run {plan.resuming_run}"
            if plan.resuming_run
            else f"Convert {plan.census.to_convert - plan.held} records"
            + (f" ({plan.held} held back for review)" if plan.held else "")
        )
        return ask_to_write(
            f"{what} of {plan.profile.name} ({plan.profile.display_name}) at cutoff"
            f" {format_instant(plan.cutoff.instant)} in {where}."
        )

    report = cutover_and_report(
        engine,
        profile,
        resolved,
        rehearsal=dry_run,
        out_dir=out,
        unmasked=unmasked,
        batch_size=batch_size,
        confirm=confirm,
        expect=expect,
        accept_changes=accept_changes,
        max_exceptions=max_exceptions,
        progress=app.progress(),
        register=register,
        split_by=split_by,
        processes=processes,
        workers=workers,
    )
    result = report.result
    _print_cutover(result, where)
    _print_workbook(report.workbook)
    if result.plan_path is not None:
        click.echo(f"plan for the real run: {result.plan_path} (cutover --expect PLAN)")
    if result.plan_comparison is not None:
        _print_comparison(result.plan_comparison)
    if result.rehearsal and result.unmapped:
        raise UnmappedCodesError(result.unmapped, rehearsal=True)
    if result.plan_comparison is not None and result.plan_comparison.after:
        raise PlanDifferedError(str(result.run_id), len(result.plan_comparison.after))


def _print_comparison(comparison: PlanComparison) -> None:
    state = "matches" if comparison.matches else "DIFFERS"
    click.echo(f"compared with the rehearsal plan {comparison.plan_path}: {state}")
    if not comparison.compared_before:
        click.echo("  before: not compared (the run was resumed or already complete)")
    if comparison.unchanged_file:
        click.echo(
            "  before: the database file is the one the rehearsal read (SQLite's change counter,"
            " its size and time unchanged): its records were not read again"
        )
    if comparison.unchanged_rows:
        click.echo(
            "  before: the register holds the very rows the rehearsal read (PostgreSQL: none"
            " written since its snapshot, as many as then): its records were not read again"
        )
    if comparison.accepted:
        click.echo("  the run went ahead on a changed register (--accept-changes)")
    if comparison.record_differences:
        click.echo(f"  records changed since the rehearsal: {comparison.record_differences}")
    for d in (comparison.before + comparison.after)[:40]:
        click.echo(f"  {d.kind:<11} {d.key}: rehearsal {d.expected}, run {d.actual}")


def _print_cutover(result: CutoverResult, db: str) -> None:
    census = result.census
    if result.rehearsal:
        click.echo("演练 REHEARSAL (dry run): nothing was written to the database")
    else:
        verbs = {
            "completed": "completed",
            "resumed": "resumed and completed",
            "already-complete": "already complete: nothing to do",
            "released": f"already complete; {result.released} held record(s) released, converted",
        }
        click.echo(f"正式 CUTOVER run {result.run_id}: {verbs.get(result.outcome, result.outcome)}")
    p = result.profile
    click.echo(f"  profile            {p.name} ({p.display_name}), {p.policy_document}")
    click.echo(
        f"  cutoff             {format_instant(result.cutoff.instant)} ({result.cutoff.source})"
    )
    click.echo(f"  database           {db}")
    rows = [
        ("register records", census.total),
        ("out of scope", census.out_of_scope),
        ("in scope, inactive", census.inactive),
        ("in scope, active", census.in_scope_active),
        ("  to convert" if result.rehearsal else "  converted", result.converted),
        ("  already resident", census.already_resident),
        ("  not in permanent register", census.not_permanent),
        ("  unmapped 户口性质", sum(v.count for v in census.unmapped())),
    ]
    if result.held:
        rows.insert(5, ("  held back for review", len(result.held)))
    for label, n in rows:
        click.echo(f"  {label:<28} {n:>10}")
    if result.converted_by:
        click.echo("  by original nature and 户别:")
        for (nature, category), n in sorted(
            result.converted_by.items(), key=lambda kv: (kv[0][0].value, kv[0][1] or "")
        ):
            cat = CATEGORY_LABELS[category] if category else "户别 unknown"
            click.echo(f"    {NATURE_LABELS[nature]:<8} {nature.value:<20} {cat:<12} {n:>10}")
    for v in census.unmapped():
        shown = "(empty)" if v.raw_code is None else repr(v.raw_code)
        click.echo(f"  UNMAPPED {shown}: {v.count} record(s)")
    for failure in result.worker_failures:
        click.echo(f"  a worker failed ({failure}); its partitions were converted by the others")


@cli.command("join")
@click.option("--run", "run_id", metavar="ID", help="The run to join (default: the latest).")
@db_option
@quiet_option
@pass_app
def join_command(app: App, run_id: str | None) -> None:
    """Work on an unfinished cutover started with --workers, from this machine or another.

    Claims the run's pending partitions one at a time and converts them, until none is left;
    the cutover that started the workers completes the run (run it again if it was stopped).
    """
    engine = app.engine()
    with app.progress()("转换 cutover (join)", None, "人") as advance:
        joined = join_run(engine, run_id, advance)
    click.echo(f"joined run {joined.run_id}: {joined.batches} batch(es) converted here")


@cli.command("verify")
@click.option("--run", "run_id", metavar="ID", help="The run to verify (default: the latest).")
@db_option
@quiet_option
@pass_app
def verify_command(app: App, run_id: str | None) -> None:
    """Re-derive a run's result from the register and the history, independently of its counters.

    Exit 0 when every check holds; otherwise exit 9 listing the discrepancies.
    """
    result = verify_run(app.engine(), run_id)
    click.echo(f"verify run {result.run_id} (profile {result.profile})")
    for check in result.checks:
        click.echo(f"  [{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    if not result.ok:
        raise VerificationFailed(result.run_id, result.discrepancies())
    click.echo("通过 PASSED")


@cli.command("report")
@click.option("--run", "run_id", metavar="ID", help="The finished run (default: the latest).")
@out_dir_option("reports")
@click.option(
    "--unmasked",
    is_flag=True,
    help="Write full ID numbers and names (masked by default).",
)
@split_options
@db_option
@quiet_option
@pass_app
def report_command(
    app: App,
    run_id: str | None,
    out: Path,
    unmasked: bool,
    split_by: AreaLevel | None,
    processes: int,
) -> None:
    """Write the audit workbook of a finished cutover again.

    A rehearsal's workbook is written by the rehearsal itself (cutover --dry-run).
    """
    _print_workbook(
        rewrite_report(
            app.engine(),
            run_id,
            out,
            unmasked,
            progress=app.progress(),
            split_by=split_by,
            processes=processes,
        )
    )


def _print_workbook(written: WorkbookResult) -> None:
    verdict = "通过 PASSED" if written.verdict_ok else "不通过 NOT PASSED"
    unmasked = " (UNMASKED: full ID numbers and names)" if written.unmasked else ""
    click.echo(f"audit workbook {written.path}{unmasked}")
    click.echo(
        f"  {written.detail_rows} detail rows; verdict {verdict}; sha256 {written.sha256_path}"
    )
    for area in written.areas:
        click.echo(f"  area {area.area} {area.name}: {area.rows} detail rows, {area.path}")


@cli.command("rollback")
@click.option("--run", "run_id", required=True, metavar="ID", help="The run to undo.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation before restoring.")
@click.option(
    "--skip-changed",
    is_flag=True,
    help="Leave records changed since the cutover as they are and restore all others.",
)
@batch_size_option("History rows")
@out_dir_option("reports")
@click.option(
    "--unmasked",
    is_flag=True,
    help="Write full ID numbers and names into the rollback workbook (masked by default).",
)
@db_option
@quiet_option
@pass_app
def rollback_command(
    app: App,
    run_id: str,
    yes: bool,
    skip_changed: bool,
    batch_size: int,
    out: Path,
    unmasked: bool,
) -> None:
    """Undo a cutover: restore every record of the run to its original code and 户别.

    The history is kept (its rows are marked reverted_at). Refuses, listing them, when records were
    changed after the cutover, unless --skip-changed. Killed at any point, the same command
    continues; afterwards a new cutover can run.

    Writes the rollback workbook (restored and skipped records, masked unless --unmasked) into --out.
    """
    engine = app.engine()

    def confirm(run: str, records: int) -> bool:
        if yes:
            return True
        return ask_to_write(
            f"Restore {records} records of run {run} to their original type in"
            f" {display_url(engine.url)}."
        )

    result = rollback_run(
        engine,
        run_id,
        skip_changed=skip_changed,
        batch_size=batch_size,
        confirm=confirm,
        progress=app.progress(),
    )
    verbs = {
        "reverted": "rolled back",
        "resumed": "rollback resumed and finished",
        "already-reverted": "already rolled back: nothing to do",
    }
    click.echo(f"回退 ROLLBACK run {result.run_id}: {verbs[result.outcome]}")
    click.echo(f"  records restored             {result.restored:>10}")
    click.echo(f"  skipped, changed since       {result.skipped_changed:>10}")
    if result.changed_records:
        keys = ", ".join(str(k) for k in result.changed_records)
        click.echo(f"  changed records (keys): {keys}")
    from .rollback_report import write_rollback_workbook

    written = write_rollback_workbook(engine, result, out, unmasked, progress=app.progress())
    shown = " (UNMASKED: full ID numbers and names)" if written.unmasked else ""
    verdict = "通过 PASSED" if written.ok else "不通过 NOT PASSED"
    click.echo(f"rollback workbook {written.path}{shown}")
    click.echo(
        f"  {written.restored_rows} restored, {written.skipped_rows} skipped rows; check {verdict};"
        f" sha256 {written.sha256_path}"
    )
