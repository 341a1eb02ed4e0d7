"""The command line: parse, call one core function, print. No SQL and no openpyxl here.

Errors are turned into a message and an exit code in one place, :meth:`HukouGroup.invoke`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from .codes import CATEGORY_LABELS, NATURE_LABELS
from .cutover import DEFAULT_BATCH_SIZE, CutoverPlan, CutoverResult
from .db import DEFAULT_URL, ENV_URL, display_url, make_engine, parse_url
from .errors import (
    DatabaseError,
    HukouError,
    UnmappedCodesError,
    UsageError,
    VerificationFailed,
)
from .history import lookup as lookup_history
from .identity import STATUS_LABELS, lookup_file
from .idnumbers import mask_id, mask_name
from .ingest import ImportMode, ImportResult, import_applications, import_register
from .instants import format_instant
from .plan import PlanComparison
from .profiles import BUILTIN_PROFILES, load_profile, resolve_cutoff
from .progress import Advance, Progress
from .rollback import rollback_run
from .runbook import cutover_and_report
from .sample import SampleOptions, write_sample
from .verify import verify_run
from .workbook import WorkbookResult, rewrite_report

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    """Shared state of one invocation (click's make_pass_decorator pattern)."""

    db_url: str = DEFAULT_URL
    password_file: Path | None = None
    quiet: bool = False
    _engine: Engine | None = field(default=None, repr=False)

    def engine(self) -> Engine:
        if self._engine is None:
            password = None
            if self.password_file is not None:
                password = self.password_file.read_text(encoding="utf-8").strip()
            self._engine = make_engine(parse_url(self.db_url, password))
        return self._engine

    def progress(self) -> Progress:
        quiet = self.quiet

        @contextmanager
        def phase(name: str, total: int | None, unit: str) -> Iterator[Advance]:
            if quiet:
                yield lambda _n: None
                return
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                desc=name,
                unit=unit,
                unit_scale=unit == "B",
                file=sys.stderr,
                mininterval=0.5,
                dynamic_ncols=True,
            )
            try:
                yield bar.update
            finally:
                bar.close()

        return phase


pass_app = click.make_pass_decorator(App, ensure=True)


# ---------------------------------------------------------------- shared options


def _set_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(App).db_url = value


def _set_password_file(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(App).password_file = value


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(App).quiet = True


def db_option(f: F) -> F:
    f = click.option(
        "--db-password-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        expose_value=False,
        callback=_set_password_file,
        help="Read the database password from this file (or set HUKOU_DB_PASSWORD).",
    )(f)
    return click.option(
        "--db",
        envvar=ENV_URL,
        metavar="URL",
        expose_value=False,
        callback=_set_db,
        help=f"Database URL (env {ENV_URL}; default {DEFAULT_URL}): sqlite:///FILE,"
        " postgresql://USER@HOST/DB, mysql://USER@HOST/DB.",
    )(f)


def quiet_option(f: F) -> F:
    return click.option(
        "--quiet",
        "-q",
        is_flag=True,
        expose_value=False,
        callback=_set_quiet,
        help="No progress bars on stderr.",
    )(f)


def out_dir_option(default: str) -> Callable[[F], F]:
    return click.option(
        "--out",
        "out",
        type=click.Path(file_okay=False, path_type=Path),
        default=default,
        show_default=True,
        help="Directory for the files this command writes.",
    )


def profile_options(f: F) -> F:
    f = click.option(
        "--force-cutoff",
        is_flag=True,
        help="Accept a cutoff that differs from the policy text's or is past its deadline.",
    )(f)
    f = click.option(
        "--cutoff",
        metavar="INSTANT",
        help="The cutoff instant: ISO 8601, or '2016-09-30 24:00' (no offset means +08:00).",
    )(f)
    return click.option(
        "--profile",
        "-p",
        "profile_name",
        required=True,
        metavar="NAME|FILE.toml",
        help=f"Jurisdiction profile: {', '.join(BUILTIN_PROFILES)}, or a profile file.",
    )(f)


# ---------------------------------------------------------------- the group


class HukouGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HukouError as err:
            click.echo(f"hukou-convert: {err.message()}", err=True)
            ctx.exit(err.exit_code)
        except SQLAlchemyError as err:
            wrapped = DatabaseError(f"database error: {type(err).__name__}")
            click.echo(f"hukou-convert: {wrapped.message()}", err=True)
            ctx.exit(wrapped.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except OSError as err:
            click.echo(f"hukou-convert: {err.strerror or err}: {err.filename or ''}", err=True)
            ctx.exit(1)
        except Exception as err:
            if os.environ.get("HUKOU_DEBUG"):
                raise
            click.echo(
                f"hukou-convert: internal error ({type(err).__name__}); set HUKOU_DEBUG=1 for the"
                " traceback",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=HukouGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hukou-convert")
def cli() -> None:
    """hukou-convert: the household-register cutover (户籍一元化) as one batch tool.

    Import the legacy register, rehearse (--dry-run), run the cutover at the cutoff, verify it, and
    answer "what was this person's type before the reform?" from the history table.
    """


# ---------------------------------------------------------------- import


@cli.command("import")
@click.argument("persons_file", type=click.Path(path_type=Path))
@click.option(
    "--applications",
    "applications_file",
    type=click.Path(path_type=Path),
    help="In-flight 农转非/非转农 applications file to load too.",
)
@click.option("--encoding", help="Force the CSV encoding (utf-8, gbk, gb18030); default: detect.")
@click.option("--append", "mode", flag_value=ImportMode.APPEND.value, help="Add to the register.")
@click.option(
    "--replace", "mode", flag_value=ImportMode.REPLACE.value, help="Empty the register first."
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where rejected rows go (default ./<file>.rejects.csv).",
)
@db_option
@quiet_option
@pass_app
def import_command(
    app: App,
    persons_file: Path,
    applications_file: Path | None,
    encoding: str | None,
    mode: str | None,
    rejects: Path | None,
) -> None:
    """Load a legacy register export (CSV in UTF-8/GBK/GB18030, or .xlsx).

    Headers in Chinese or English, any order. Rejected rows go to a reject file with their line,
    column and reason; a file that cannot be read loads nothing.
    """
    chosen = ImportMode(mode) if mode else ImportMode.NEW
    result = import_register(
        app.engine(),
        persons_file,
        mode=chosen,
        encoding=encoding,
        reject_path=rejects,
        progress=app.progress(),
    )
    _print_import(result)
    if applications_file is not None:
        app_result = import_applications(
            app.engine(),
            applications_file,
            mode=chosen,
            encoding=encoding,
            reject_path=None,
            progress=app.progress(),
        )
        _print_import(app_result)


def _print_import(result: ImportResult) -> None:
    click.echo(
        f"{result.kind}: {result.loaded} loaded, {result.rejected} rejected"
        f" from {result.file} ({result.encoding or 'xlsx'}, import #{result.import_id})"
    )
    if result.reject_file:
        click.echo(f"  rejected rows with reasons: {result.reject_file}")
        for reason, n in sorted(result.rejects_by_reason.items(), key=lambda kv: -kv[1]):
            click.echo(f"    {n:>8}  {reason}")


# ---------------------------------------------------------------- profiles


@cli.command("profiles")
@click.option("--show", "show", metavar="NAME|FILE", help="Show one profile with its code table.")
def profiles_command(show: str | None) -> None:
    """List the built-in jurisdiction profiles, or show one with its code table."""
    if show is None:
        for p in BUILTIN_PROFILES.values():
            click.echo(
                f"{p.name:<10} {p.display_name:<8} scope {','.join(p.scope):<8} {p.cutoff_rule()}"
            )
            click.echo(f"{'':<10} {p.policy_document}")
        return
    p = load_profile(show)
    click.echo(f"name            {p.name}")
    click.echo(f"jurisdiction    {p.display_name}")
    click.echo(f"policy document {p.policy_document}")
    click.echo(f"scope           {', '.join(p.scope)}")
    click.echo(f"cutoff          {p.cutoff_rule()}")
    if p.freeze_start:
        click.echo(f"freeze (停办)    from {format_instant(p.freeze_start)}")
    click.echo(f"active status   {', '.join(p.active_statuses)}")
    click.echo(f"fingerprint     {p.fingerprint()}")
    click.echo("code table:")
    for e in sorted(p.codes.entries(), key=lambda e: (len(e.raw), e.raw)):
        nature = f"{e.nature.value} {NATURE_LABELS[e.nature]}" if e.nature else ""
        category = CATEGORY_LABELS[e.category] if e.category else "(from 户别)" if nature else ""
        click.echo(f"  {e.raw:<14} {e.action.value:<14} {nature:<24} {category}")


# ---------------------------------------------------------------- cutover


@cli.command("cutover")
@profile_options
@click.option("--dry-run", "dry_run", is_flag=True, help="Rehearse: write nothing to the database.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation before writing.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Records per transaction (each batch is a checkpoint to resume from).",
)
@out_dir_option("reports")
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
) -> None:
    """Re-register every active person in scope as 居民户口 at the cutoff.

    With --dry-run this is the rehearsal: the same census and counts as the real run, nothing
    written to the database; it writes its plan beside the workbook. The real run asks for
    confirmation (unless --yes), holds the database's live-run lock, and can be re-run after any
    interruption: it continues the same run. With --expect PLAN it refuses to start on a register
    that changed since that rehearsal (unless --accept-changes) and shows what changed.

    Both write the audit workbook (xlsx, personal data masked unless --unmasked) into --out.
    """
    if dry_run and (expect or accept_changes or max_exceptions is not None):
        raise UsageError("--expect, --accept-changes and --max-exceptions are for the real run")
    profile = load_profile(profile_name)
    resolved = resolve_cutoff(profile, cutoff, force_cutoff)
    engine = app.engine()

    def confirm(plan: CutoverPlan) -> bool:
        if yes:
            return True
        what = (
            f"Continue unfinished run {plan.resuming_run}"
            if plan.resuming_run
            else f"Convert {plan.census.to_convert} records"
        )
        click.echo(
            f"{what} of {plan.profile.name} ({plan.profile.display_name}) at cutoff"
            f" {format_instant(plan.cutoff.instant)} in {display_url(engine.url)}.",
            err=True,
        )
        try:
            return click.confirm("This writes to the register. Proceed?", err=True)
        except click.Abort:
            return False

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
    )
    result = report.result
    _print_cutover(result, display_url(engine.url))
    _print_workbook(report.workbook)
    if result.plan_path is not None:
        click.echo(f"plan for the real run: {result.plan_path} (cutover --expect PLAN)")
    if result.plan_comparison is not None:
        _print_comparison(result.plan_comparison)
    if result.rehearsal and result.unmapped:
        raise UnmappedCodesError(result.unmapped, rehearsal=True)


def _print_comparison(comparison: PlanComparison) -> None:
    state = "matches" if comparison.matches else "DIFFERS"
    click.echo(f"compared with the rehearsal plan {comparison.plan_path}: {state}")
    if not comparison.compared_before:
        click.echo("  before: not compared (the run was resumed or already complete)")
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


# ---------------------------------------------------------------- verify and lookup


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


@cli.command("lookup")
@click.argument("id_numbers", nargs=-1)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="How to print the answers for ID numbers given as arguments.",
)
@click.option(
    "--file",
    "id_file",
    type=click.Path(path_type=Path),
    help="A CSV or .xlsx of ID numbers (any header) to answer in bulk; needs --out.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --file: the result, .xlsx or .csv, every input row with the answer appended.",
)
@click.option("--column", help="With --file: the header of the ID number column (default: found).")
@click.option("--encoding", help="With --file: force the CSV encoding (utf-8, gbk, gb18030).")
@click.option("--unmasked", is_flag=True, help="Names and ID numbers in full (masked by default).")
@db_option
@quiet_option
@pass_app
def lookup_command(
    app: App,
    id_numbers: tuple[str, ...],
    fmt: str,
    id_file: Path | None,
    out: Path | None,
    column: str | None,
    encoding: str | None,
    unmasked: bool,
) -> None:
    """What was this person's type before the reform? For ID numbers, or a file of thousands.

    Not found, invalid, and converted-then-reverted numbers are reported as such, never dropped.
    """
    if id_file is not None:
        if out is None or id_numbers:
            raise UsageError("--file needs --out, and no ID numbers as arguments")
        bulk = lookup_file(
            app.engine(),
            id_file,
            out,
            column=column,
            encoding=encoding,
            unmasked=unmasked,
            progress=app.progress(),
        )
        counts = ", ".join(f"{STATUS_LABELS[k]} {v}" for k, v in sorted(bulk.by_status.items()))
        click.echo(f"{bulk.rows} rows looked up (column {bulk.id_column!r}): {counts}")
        click.echo(f"  result: {bulk.output}{'  (UNMASKED)' if unmasked else ''}")
        return
    if not id_numbers:
        raise UsageError("give ID numbers, or --file FILE --out RESULT")
    results = lookup_history(app.engine(), id_numbers)
    records: list[dict[str, str]] = []
    for r in results:
        base = {"id_number": r.query.strip(), "status": r.status, "note": r.note}
        if not r.entries:
            records.append(base | dict.fromkeys(_LOOKUP_FIELDS, ""))
            continue
        for e in r.entries:
            records.append(
                base
                | {
                    "name": (e.name if unmasked else mask_name(e.name)) if e.name else "",
                    "original_type": e.original_label,
                    "original_code": e.original_code or "",
                    "original_nature": e.original_nature,
                    "category": e.category_label,
                    "effective_at": format_instant(e.effective_at),
                    "run_id": e.run_id,
                    "reverted_at": format_instant(e.reverted_at) if e.reverted_at else "",
                }
            )
    if fmt == "json":
        click.echo(json.dumps(records, ensure_ascii=False, indent=2))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(list(records[0]))
        writer.writerows([list(rec.values()) for rec in records])
    else:
        for rec in records:
            if rec["status"] != "found":
                click.echo(f"{rec['id_number']}  {rec['status'].upper()}  {rec['note']}".rstrip())
                continue
            reverted = f"  REVERTED {rec['reverted_at']}" if rec["reverted_at"] else ""
            click.echo(
                f"{rec['id_number']}  {rec['name']}  {rec['original_type']} (code"
                f" {rec['original_code']}, {rec['original_nature']})  {rec['category']}"
                f"  effective {rec['effective_at']}  run {rec['run_id']}{reverted}"
            )


_LOOKUP_FIELDS = (
    "name",
    "original_type",
    "original_code",
    "original_nature",
    "category",
    "effective_at",
    "run_id",
    "reverted_at",
)


# ---------------------------------------------------------------- sample


@cli.command("sample")
@click.option("--profile", "-p", "profile_name", required=True, help="Profile whose scope to fill.")
@click.option("--persons", type=click.IntRange(min=1), required=True, help="How many persons.")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output .csv or .xlsx.",
)
@click.option("--encoding", default="utf-8", show_default=True, help="CSV encoding (utf-8, gbk).")
@click.option("--seed", type=int, default=2016, show_default=True)
@quiet_option
@pass_app
def sample_command(
    app: App, profile_name: str, persons: int, out: Path, encoding: str, seed: int
) -> None:
    """Write a synthetic register over the real division codes (never real people)."""
    profile = load_profile(profile_name)
    count = write_sample(
        out, SampleOptions(profile.scope, persons, seed), encoding, progress=app.progress()
    )
    click.echo(f"{count} synthetic persons written to {out}")


# ---------------------------------------------------------------- check (错、重、假、漏)


@cli.command("check")
@profile_options
@click.option(
    "--list",
    "list_findings",
    is_flag=True,
    help="Also print every finding (ID numbers and names masked).",
)
@db_option
@quiet_option
@pass_app
def check_command(
    app: App, profile_name: str, cutoff: str | None, force_cutoff: bool, list_findings: bool
) -> None:
    """Check the register in the profile's scope for 错、重、假、漏 records (reads only).

    Prints the count of each exception code. Exceptions do not stop the cutover (the reform converts
    every identifiable active record): finding some is not a failure, the exit code is 0.
    """
    from .checks import CHECKS, run_checks

    profile = load_profile(profile_name)
    resolved = resolve_cutoff(profile, cutoff, force_cutoff)
    engine = app.engine()
    report = run_checks(engine, profile, cutoff=resolved.instant, progress=app.progress())
    click.echo(f"检查 CHECK {profile.name} ({profile.display_name}) in {display_url(engine.url)}")
    click.echo(f"  cutoff {format_instant(resolved.instant)} ({resolved.source})")
    click.echo(f"  records checked in scope: {report.scanned}")
    click.echo(f"{'code':<30} {_wide('类别', 4)} {'severity':<8} {_wide('标题 title', 40)} count")
    for code, spec in CHECKS.items():
        click.echo(
            f"{code:<30} {_wide(spec.category, 4)} {spec.severity:<8} {_wide(spec.title, 40)}"
            f" {report.counts[code]:>5}"
        )
    totals = f"errors {report.errors}, warnings {report.warnings}"
    click.echo(f"{_wide('合计 total', 30)} {totals:<54} {report.total:>5}")
    found = [code for code, n in report.counts.items() if n]
    if found:
        click.echo("处理 what is done (active records; inactive ones are not converted anyway):")
        for code in found:
            click.echo(f"  {code:<30} {CHECKS[code].action}")
    if list_findings:
        click.echo("findings (masked):")
        for f in report.findings:
            upgraded = f" -> {mask_id(f.upgraded_id)}" if f.upgraded_id else ""
            click.echo(
                f"  {f.code:<30} #{f.record_id or '':<8} {mask_id(f.id_number) or '-':<18}"
                f" {_wide(mask_name(f.name) or '-', 8)} {f.explanation}{upgraded}  [{f.action}]"
            )


def _wide(text: str, width: int) -> str:
    """Pad to a display width: Chinese characters take two columns of a terminal."""
    import unicodedata

    shown = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(0, width - shown)


# ---------------------------------------------------------------- report


@cli.command("report")
@click.option("--run", "run_id", metavar="ID", help="The finished run (default: the latest).")
@out_dir_option("reports")
@click.option(
    "--unmasked",
    is_flag=True,
    help="Write full ID numbers and names (masked by default).",
)
@db_option
@quiet_option
@pass_app
def report_command(app: App, run_id: str | None, out: Path, unmasked: bool) -> None:
    """Write the audit workbook of a finished cutover again.

    A rehearsal's workbook is written by the rehearsal itself (cutover --dry-run).
    """
    _print_workbook(rewrite_report(app.engine(), run_id, out, unmasked, progress=app.progress()))


def _print_workbook(written: WorkbookResult) -> None:
    verdict = "通过 PASSED" if written.verdict_ok else "不通过 NOT PASSED"
    unmasked = " (UNMASKED: full ID numbers and names)" if written.unmasked else ""
    click.echo(f"audit workbook {written.path}{unmasked}")
    click.echo(
        f"  {written.detail_rows} detail rows; verdict {verdict}; sha256 {written.sha256_path}"
    )


@cli.command("rollback")
@click.option("--run", "run_id", required=True, metavar="ID", help="The run to undo.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation before restoring.")
@click.option(
    "--skip-changed",
    is_flag=True,
    help="Leave records changed since the cutover as they are and restore all others.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="History rows per transaction (each batch is a checkpoint to resume from).",
)
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
        click.echo(
            f"Restore {records} records of run {run} to their original type in"
            f" {display_url(engine.url)}.",
            err=True,
        )
        try:
            return click.confirm("This writes to the register. Proceed?", err=True)
        except click.Abort:
            return False

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


# ---------------------------------------------------------------- stats, divisions, booklets


@cli.command("stats")
@click.option("--run", "run_id", metavar="ID", help="The completed run (default: the latest).")
@click.option(
    "--by",
    type=click.Choice(["county", "township"]),
    default="county",
    show_default=True,
    help="One row per county/district or per township (乡镇/街道).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write FILE.xlsx (with charts) or FILE.csv instead of printing a table.",
)
@db_option
@quiet_option
@pass_app
def stats_command(app: App, run_id: str | None, by: str, out: Path | None) -> None:
    """Population by area as of the cutoff and after the reform.

    Persons the run converted, by original nature (from the history table); registered population
    in urban (1xx) and rural (2xx) units and 户籍人口城镇化率 = urban ÷ (urban + rural), per
    county/district (or township) and in total.
    """
    from .stats import population_stats, write_stats

    result = population_stats(
        app.engine(), run_id, "township" if by == "township" else "county", app.progress()
    )
    if out is not None:
        click.echo(f"statistics of run {result.run_id} written to {write_stats(result, out)}")
        return
    click.echo(f"户籍人口统计 run {result.run_id} ({result.profile} {result.jurisdiction})")
    click.echo(
        f"{_wide('代码 code', 13)} {_wide('名称 name', 22)} {'converted':>10} {'urban':>10}"
        f" {'rural':>10} {'unknown':>8} {'total':>10} {'城镇化率':>8}"
    )
    for area in [*result.areas, result.total]:
        rate = "-" if area.rate is None else f"{area.rate:.2%}"
        click.echo(
            f"{_wide(area.code, 13)} {_wide(area.name, 22)} {area.converted_total:>10}"
            f" {area.urban:>10} {area.rural:>10} {area.unknown:>8} {area.registered:>10}"
            f" {rate:>8}"
        )


@cli.group("divisions")
def divisions_group() -> None:
    """The division table (统计用区划和城乡划分代码): names and urban-rural codes."""


@divisions_group.command("import")
@click.argument("division_file", type=click.Path(path_type=Path))
@db_option
@quiet_option
@pass_app
def divisions_import_command(app: App, division_file: Path) -> None:
    """Load a division table (CSV: code,name,level,parent_code,urban_rural_code) over the shipped one.

    Inserts new codes and updates changed ones in one transaction; any invalid row refuses the
    whole file (exit 3, naming line and column).
    """
    from .divisions import import_divisions

    result = import_divisions(app.engine(), division_file, app.progress())
    click.echo(
        f"divisions: {result.rows} rows from {result.file}: {result.inserted} new,"
        f" {result.updated} updated, {result.unchanged} unchanged;"
        f" {result.in_effect} divisions in effect"
    )


@divisions_group.command("list")
@click.option("--prefix", default="", metavar="DIGITS", help="Only codes starting with these.")
@db_option
@pass_app
def divisions_list_command(app: App, prefix: str) -> None:
    """List the divisions in effect (imported over shipped): code, level, urban-rural code, name."""
    from .divisions import list_divisions

    for d in list_divisions(app.engine(), prefix):
        click.echo(f"{d.code} {d.level} {d.urban_rural_code or '---'} {d.name}")


@cli.command("booklets")
@click.option("--run", "run_id", metavar="ID", help="The completed run (default: the latest).")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The xlsx to write (default reports/hukou-booklets-<run>.xlsx).",
)
@click.option("--unmasked", is_flag=True, help="Heads' names and ID numbers in full.")
@db_option
@quiet_option
@pass_app
def booklets_command(app: App, run_id: str | None, out: Path | None, unmasked: bool) -> None:
    """Booklet replacement list: per police station, households whose 户口簿 shows an abolished type.

    Households with at least one member converted by the run; replaced on request.
    """
    from .booklets import write_booklet_list

    result = write_booklet_list(
        app.engine(), run_id, out, unmasked=unmasked, progress=app.progress()
    )
    shown = " (UNMASKED: full ID numbers and names)" if result.unmasked else ""
    click.echo(f"booklet list of run {result.run_id}: {result.path}{shown}")
    for station, n in sorted(result.by_station.items()):
        click.echo(f"  {_wide(station, 30)} {n:>8} households")
    click.echo(f"  {_wide('合计 total', 30)} {result.households:>8} households")


def main() -> None:
    cli(prog_name="hukou-convert")
