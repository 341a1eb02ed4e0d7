"""The command line: parse, call one core function, print. No SQL and no openpyxl here.

Errors are turned into a message and an exit code in one place, :meth:`HukouGroup.invoke`.
"""

from __future__ import annotations

import logging
import os
import sys
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from .db import DEFAULT_URL, ENV_URL, make_engine, parse_url
from .errors import (
    DatabaseError,
    HukouError,
)
from .mapping import load_register
from .profiles import BUILTIN_PROFILES
from .progress import Advance, Progress
from .register import RegisterMap

ENV_MAPPING = "HUKOU_MAPPING"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    """Shared state of one invocation (click's make_pass_decorator pattern)."""

    db_url: str = DEFAULT_URL
    password_file: Path | None = None
    password_prompt: bool = False  # ask on the terminal, never echoed
    quiet: bool = False
    mapping_file: Path | None = None  # a legacy register converted in place
    _engine: Engine | None = field(default=None, repr=False)

    def engine(self) -> Engine:
        if self._engine is None:
            password = None
            if self.password_file is not None:
                password = self.password_file.read_text(encoding="utf-8").strip()
            elif self.password_prompt:
                password = ask_password("Database password")
            self._engine = make_engine(parse_url(self.db_url, password))
        return self._engine

    def register(self) -> RegisterMap:
        return load_register(self.engine(), self.mapping_file)

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


def _set_password_prompt(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(App).password_prompt = True


def ask_password(what: str) -> str:
    """A password typed at the terminal (on stderr, not echoed): neither argv nor a file holds it."""
    return str(click.prompt(what, hide_input=True, err=True))


def _set_mapping(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(App).mapping_file = value


def mapping_option(f: F) -> F:
    return click.option(
        "--mapping",
        envvar=ENV_MAPPING,
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        expose_value=False,
        callback=_set_mapping,
        help=(
            "Work on a legacy register table in place, through this mapping file (TOML);"
            f" or set {ENV_MAPPING}. Default: the built-in register."
        ),
    )(f)


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(App).quiet = True


def db_option(f: F) -> F:
    f = click.option(
        "--db-password-prompt",
        is_flag=True,
        expose_value=False,
        callback=_set_password_prompt,
        help="Ask for the database password on the terminal (not echoed).",
    )(f)
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
    # SQLAlchemy logs a failed reset of a dead pooled connection (server restart, session killed)
    # with its traceback; with no handler configured Python would print it to stderr beside the
    # one-line error the operator gets. The error itself still reaches the operator.
    # psycopg likewise logs a server error it ignores while abandoning a COPY, with the refused
    # row's values in its context: never on stderr.
    for name in ("sqlalchemy", "psycopg"):
        log = logging.getLogger(name)
        if not log.handlers:
            log.addHandler(logging.NullHandler())


def ask_to_write(what: str) -> bool:
    """Confirmation before a destructive step: what will happen, then y/N (no input: no)."""
    click.echo(what, err=True)
    try:
        return click.confirm("This writes to the register. Proceed?", err=True)
    except click.Abort:
        return False


def pad_display(text: str, width: int) -> str:
    """Pad to a display width: Chinese characters take two columns of a terminal."""
    shown = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(0, width - shown)


def main() -> None:
    cli(prog_name="hukou-convert")


# The commands register themselves on ``cli`` when their modules are imported.
from . import cli_after, cli_cutover, cli_register  # noqa: E402, F401
