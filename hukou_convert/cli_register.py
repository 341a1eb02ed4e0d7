"""Commands on the register itself: import, profiles, sample, check, divisions, mapping."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .cli import (
    App,
    ask_password,
    cli,
    db_option,
    mapping_option,
    pad_display,
    pass_app,
    profile_options,
    quiet_option,
)
from .codes import CATEGORY_LABELS, NATURE_LABELS
from .db import display_url, make_engine, parse_url
from .errors import UnmappedCodesError, UnmappedValue, UsageError
from .idnumbers import mask_id, mask_name
from .ingest import ImportMode, ImportResult, import_applications, import_register
from .instants import format_instant
from .legacy_import import import_from_db
from .mapping import check_mapping
from .profiles import BUILTIN_PROFILES, load_profile, resolve_cutoff
from .sample import MAX_SAMPLE_PERSONS, SampleOptions, write_sample


@cli.command("import")
@click.argument("persons_file", type=click.Path(path_type=Path), required=False)
@click.option(
    "--from-db",
    "from_db",
    metavar="URL",
    help="Copy the register from a legacy database table instead of a file (needs --mapping).",
)
@click.option(
    "--mapping",
    "mapping_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --from-db: the mapping file naming the legacy table and its columns.",
)
@click.option(
    "--from-db-password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The legacy database's password (or set HUKOU_FROM_DB_PASSWORD).",
)
@click.option(
    "--from-db-password-prompt",
    is_flag=True,
    help="Ask for the legacy database's password on the terminal (not echoed).",
)
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
    persons_file: Path | None,
    from_db: str | None,
    mapping_file: Path | None,
    from_db_password_file: Path | None,
    from_db_password_prompt: bool,
    applications_file: Path | None,
    encoding: str | None,
    mode: str | None,
    rejects: Path | None,
) -> None:
    """Load a legacy register export (CSV in UTF-8/GBK/GB18030, or .xlsx), or copy a legacy
    database table through a mapping file (--from-db URL --mapping FILE).

    Headers in Chinese or English, any order. Rejected rows go to a reject file with their line,
    column and reason; a file that cannot be read loads nothing.
    """
    chosen = ImportMode(mode) if mode else ImportMode.NEW
    if (persons_file is None) == (from_db is None) or (from_db is None) != (mapping_file is None):
        raise UsageError("give a PERSONS_FILE, or --from-db URL with --mapping FILE")
    if from_db is not None:
        assert mapping_file is not None
        if from_db_password_file:
            password: str | None = from_db_password_file.read_text(encoding="utf-8").strip()
        elif from_db_password_prompt:
            password = ask_password("Legacy database password")
        else:
            password = os.environ.get("HUKOU_FROM_DB_PASSWORD")
        result = import_from_db(
            app.engine(),
            make_engine(parse_url(from_db, password)),
            mapping_file,
            mode=chosen,
            reject_path=rejects,
            progress=app.progress(),
        )
    else:
        assert persons_file is not None
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
    for note in result.notes:  # formulas and merged ranges of a workbook, by line and column
        click.echo(f"hukou-convert: warning: {note}", err=True)


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


@cli.command("sample")
@click.option("--profile", "-p", "profile_name", required=True, help="Profile whose scope to fill.")
@click.option(
    "--persons",
    type=click.IntRange(min=1, max=MAX_SAMPLE_PERSONS),
    required=True,
    help="How many persons.",
)
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


@cli.command("check")
@profile_options
@click.option(
    "--list",
    "list_findings",
    is_flag=True,
    help="Also print every finding (ID numbers and names masked).",
)
@mapping_option
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
    register = app.register()
    report = run_checks(
        engine, profile, cutoff=resolved.instant, progress=app.progress(), register=register
    )
    click.echo(f"检查 CHECK {profile.name} ({profile.display_name}) in {display_url(engine.url)}")
    click.echo(f"  cutoff {format_instant(resolved.instant)} ({resolved.source})")
    click.echo(f"  records checked in scope: {report.scanned}")
    click.echo(
        f"{'code':<30} {pad_display('类别', 4)} {'severity':<8} {pad_display('标题 title', 40)} count"
    )
    for code, spec in CHECKS.items():
        click.echo(
            f"{code:<30} {pad_display(spec.category, 4)} {spec.severity:<8} {pad_display(spec.title, 40)}"
            f" {report.counts[code]:>5}"
        )
    totals = f"errors {report.errors}, warnings {report.warnings}"
    click.echo(f"{pad_display('合计 total', 30)} {totals:<54} {report.total:>5}")
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
                f" {pad_display(mask_name(f.name) or '-', 8)} {f.explanation}{upgraded}  [{f.action}]"
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


@cli.group("mapping")
def mapping_group() -> None:
    """Mapping files: convert a legacy register table where it lives, through its own columns."""


@mapping_group.command("check")
@click.option(
    "--mapping",
    "mapping_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The mapping file (TOML) naming the table, its key and its columns.",
)
@click.option(
    "--profile",
    "-p",
    "profile_name",
    default="zhenhai",
    show_default=True,
    metavar="NAME|FILE.toml",
    help="The profile whose code table the values present are checked against.",
)
@db_option
@pass_app
def mapping_check_command(app: App, mapping_file: Path, profile_name: str) -> None:
    """Validate a mapping against the real schema before any cutover is tried.

    Every table and column name is checked against an allowlist pattern and the reflected schema;
    the key must be a single-column unique key. Then the 户口性质 and status values present are
    sampled: values the profile does not map are listed (exit 6), never guessed.
    """
    report = check_mapping(app.engine(), mapping_file, load_profile(profile_name))
    kind = "integer" if report.key_is_integer else "text"
    click.echo(f"mapping {report.source}: table {report.table}, key {report.key} ({kind})")
    click.echo(f"  {report.records} records")
    click.echo("  户口性质 values present:")
    for raw, n, what in report.codes:
        shown = "(empty)" if raw is None else repr(raw)
        click.echo(f"    {shown:<20} {n:>10}  {what}")
    click.echo("  status values present:")
    for raw, n, active in report.statuses:
        shown = "(empty)" if raw is None else repr(raw)
        click.echo(f"    {shown:<20} {n:>10}  {'active' if active else 'not active'}")
    if report.categories:
        click.echo("  户别 values present:")
        for raw, n, what in report.categories:
            shown = "(empty)" if raw is None else repr(raw)
            click.echo(f"    {shown:<20} {n:>10}  {what}")
    if report.unmapped:
        raise UnmappedCodesError(
            [UnmappedValue(raw, n, no_category) for raw, n, no_category in report.unmapped],
            rehearsal=True,
        )
    click.echo("通过 PASSED: every name exists, every code value present is mapped")
