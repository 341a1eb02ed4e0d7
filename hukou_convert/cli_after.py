"""After the reform: look-up, statistics, the booklet replacement list."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from .cli import App, cli, db_option, pad_display, pass_app, quiet_option
from .errors import (
    UsageError,
)
from .history import lookup as lookup_history
from .identity import STATUS_LABELS, lookup_file
from .idnumbers import mask_name
from .instants import format_instant


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
            if not rec["run_id"]:
                click.echo(f"{rec['id_number']}  {rec['status'].upper()}  {rec['note']}".rstrip())
                continue
            reverted = f"  REVERTED {rec['reverted_at']}" if rec["reverted_at"] else ""
            if rec["status"] == "ambiguous":
                reverted += f"  AMBIGUOUS: {rec['note']}"
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
        f"{pad_display('代码 code', 13)} {pad_display('名称 name', 22)} {'converted':>10} {'urban':>10}"
        f" {'rural':>10} {'unknown':>8} {'total':>10} {'城镇化率':>8}"
    )
    for area in [*result.areas, result.total]:
        rate = "-" if area.rate is None else f"{area.rate:.2%}"
        click.echo(
            f"{pad_display(area.code, 13)} {pad_display(area.name, 22)} {area.converted_total:>10}"
            f" {area.urban:>10} {area.rural:>10} {area.unknown:>8} {area.registered:>10}"
            f" {rate:>8}"
        )


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
        click.echo(f"  {pad_display(station, 30)} {n:>8} households")
    click.echo(f"  {pad_display('合计 total', 30)} {result.households:>8} households")
