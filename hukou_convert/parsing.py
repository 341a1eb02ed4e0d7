"""A large CSV export parsed in a process of its own, beside the inserts.

Parsing is Python's work (every cell checked and converted, rejected rows named), inserting is the
database driver's: on two cores they need not take turns. A child process reads the file, parses
each row exactly as the import does in one process (:class:`ingest.RowPlan`) and hands the rows
over a chunk at a time through a pipe, rejects with their line and original text, while this
process inserts the chunk before. The pipe holds a chunk or two: memory stays flat.

The child gets the file's description and the database's driver name, never a password: it
needs the driver only to convert values the way it would (its bind processors). Dates and instants
cross the pipe as ISO text, which every driver stores as it would the value, and chunks are
marshalled, not pickled: together a third of the cost of pickling the values (1M persons: 1.4 s
against 3.0 s, split between the two processes).
"""

from __future__ import annotations

import contextlib
import marshal
import multiprocessing
import multiprocessing.connection
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from types import TracebackType
from typing import Any

from sqlalchemy import Date, DateTime, Table
from sqlalchemy.engine import make_url

from . import schema
from .bulk import Convert, bind_converters
from .errors import HukouError, InputFileError
from .fields import APPLICATION_FIELDS, PERSON_FIELDS, Reject
from .readers import TableFile

PARALLEL_FROM_BYTES = 16 << 20  # a smaller file parses in less time than a process takes to start
_CHUNK_ROWS = 5_000


@dataclass
class Parsed:
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # values, import id, line
    # line, original text, column, reason
    rejects: list[tuple[int, str, str | None, str]] = field(default_factory=list)
    read: int = 0  # bytes of the file read since the chunk before


def _as_text(convert: Convert | None) -> Convert:
    """A date or instant column's value as ISO text (after the driver's own conversion)."""

    def text(value: Any) -> Any:
        value = convert(value) if convert is not None else value
        if isinstance(value, datetime):
            return value.isoformat(sep=" ")
        if isinstance(value, date):
            return value.isoformat()
        return value

    return text


def _targets(kind: str) -> tuple[list[Any], Table]:
    if kind == "persons":
        return PERSON_FIELDS, schema.register
    return APPLICATION_FIELDS, schema.applications


class ParsingProcess:
    """``with ParsingProcess(table, kind, driver, import_id) as parsing: for chunk in
    parsing.chunks(): …``"""

    def __init__(self, table: TableFile, kind: str, driver: str, import_id: int) -> None:
        context = multiprocessing.get_context("forkserver")
        self._receive, send = context.Pipe(duplex=False)
        self._send = send
        self._child = context.Process(
            target=_parse,
            args=(table, kind, driver, import_id, send),
            name="hukou-parse",
            daemon=True,
        )
        self._path = str(table.path)

    def __enter__(self) -> ParsingProcess:
        self._child.start()
        self._send.close()  # the child's end: its end of file is the child's end
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._child.is_alive():
            self._child.terminate()
        self._child.join()
        self._receive.close()

    def chunks(self) -> Iterator[Parsed]:
        while True:
            try:
                message = marshal.loads(self._receive.recv_bytes())
            except EOFError:
                raise InputFileError(
                    self._path,
                    f"the process parsing the file ended (exit code {self._child.exitcode})"
                    " before the end of the file; nothing was imported",
                ) from None
            if message is None:
                return
            if message[0] == "error":  # ("error", exit code, message)
                _, code, text = message
                error = HukouError(text)
                error.exit_code = int(code)
                raise error
            _, rows, rejects, read = message
            yield Parsed(rows, rejects, read)


def _parse(table: TableFile, kind: str, driver: str, import_id: int, out: Any) -> None:
    """The child: every row of the file parsed, a chunk at a time into ``out``."""
    from .ingest import RowPlan  # the one row parser of the import, in this process too

    try:
        fields, target = _targets(kind)
        dialect = make_url(f"{driver}://").get_dialect()()
        columns = RowPlan(table, fields, target).columns
        converters = bind_converters(target, columns, dialect)
        for name in columns:
            column_type = target.c[name].type
            if isinstance(getattr(column_type, "impl_instance", column_type), (Date, DateTime)):
                converters[name] = _as_text(converters.get(name))
        plan = RowPlan(table, fields, target, converters)
        chunk = Parsed()

        @contextlib.contextmanager
        def progress(_phase: str, _total: int | None, _unit: str) -> Iterator[Any]:
            def advance(n: int) -> None:
                chunk.read += n

            yield advance

        for row in table.rows(progress):
            outcome = plan.parse(row.cells, row.line, row.formulas)
            if outcome is None:
                continue
            if isinstance(outcome, Reject):
                chunk.rejects.append((row.line, row.original, outcome.column, outcome.reason))
                continue
            chunk.rows.append((*outcome, import_id, row.line))
            if len(chunk.rows) >= _CHUNK_ROWS:
                _send(out, chunk)
                chunk = Parsed()
        _send(out, chunk)
        out.send_bytes(marshal.dumps(None))
    except HukouError as err:
        out.send_bytes(marshal.dumps(("error", err.exit_code, err.message())))
    except Exception as err:  # never a value in the message: the type only
        message = f"parsing {table.path.name} failed: {type(err).__name__}"
        out.send_bytes(marshal.dumps(("error", 1, message)))
    finally:
        out.close()


def _send(out: Any, chunk: Parsed) -> None:
    out.send_bytes(marshal.dumps(("rows", chunk.rows, chunk.rejects, chunk.read)))
