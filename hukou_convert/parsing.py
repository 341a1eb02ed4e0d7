"""A large CSV export parsed by processes of their own, beside the inserts.

Parsing is Python's work (every cell checked and converted, rejected rows named), inserting is the
database driver's: on two cores they need not take turns. One process parses the whole file while
this one inserts (SQLite, MySQL/MariaDB: this process binds every value itself and is the slower
of the two). On PostgreSQL the parsing is the longer work and is shared: the file is cut into
parts of about a megabyte, each ending with a line; a process per core takes the parts in turn
(with two: one the even parts, the other the odd) and writes their rows as COPY text, encoded in
the connection's client encoding, which this process hands to the server as it is, every chunk
into one COPY. Every row is parsed exactly as the import does in one
process (:class:`rowplan.RowPlan`) and handed over a chunk at a time through a pipe, rejects with
their line and original text; this process takes the parts' rows in the file's order, so the
register's rows are in the file's order as in one process. Each pipe holds a chunk or two:
memory stays flat.

A part must end where a record does: a quoted field may hold a line break. A part ends after a
line break with an even number of double quotes since the part began, which is where a record
ends in a well-formed file. A stray quote in an unquoted field misleads that count: a part grown
to four times its size without an even count ends at its last line break anyway, and a part that
ends inside a record says so (:class:`readers.RecordCutOff`): the parsing starts again, cut
afresh, from that record's first line, everything before it having been read right. The same
record cut again, or a fourth cut, and the rest of the file is read as one part.

Most parts of an export are plain: no double quote, backslash, tab or NUL byte. Each of their
lines is a record, split at its delimiters as the CSV reader would, and no value needs escaping as
COPY text: such a part is written line after line by one compiled function, only the lines it
does not take going through the CSV reader and the careful parsing (1M persons: the parsing's
CPU 3.7 s -> 2.7 s, the import 7.2 s -> 5.9 s).

The processes get the file's description and the database's driver name, never a password: they
need the driver only to convert values the way it would (its bind processors). Dates and instants
cross the pipe as ISO text, which every driver stores as it would the value, and chunks are
marshalled, not pickled: together a third of the cost of pickling the values (1M persons: 1.4 s
against 3.0 s, split between the processes). A chunk's COPY text follows its message as bytes of
its own, not marshalled with it (marshalling would copy 1M persons' 186 MB twice more).
"""

from __future__ import annotations

import collections
import contextlib
import io
import marshal
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import os
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, cast

from sqlalchemy import Date, DateTime, Table
from sqlalchemy.engine import make_url

from . import schema
from .bulk import Convert, bind_converters
from .errors import HukouError, InputFileError, UnprovenBytes
from .fields import APPLICATION_FIELDS, PERSON_FIELDS, Reject
from .readers import (
    Cell,
    RecordCutOff,
    Row,
    TableFile,
    csv_records,
    is_blank_record,
    line_record,
)
from .rowplan import RowPlan  # the one row parser of the import, in the parsing processes too

PARALLEL_FROM_BYTES = 16 << 20  # a smaller file parses in less time than a process takes to start
PART_BYTES = 1 << 20  # the parts the parsing processes take in turn
_CHUNK_ROWS = 5_000  # rows handed over at a time (a part: ~6,000 in a message or two)
_BLOCK_CHARS = 1 << 19  # a plain part's lines read at a time (a hint: whole lines)
_MOST_PROCESSES = 4  # a bound, not measured: this machine has 2 cores, and one COPY connection
_LONGEST_PART = 4  # times PART_BYTES: a part ends then even if its quotes are odd
_MOST_RESTARTS = 3  # parts cut inside a record; after that, the rest of the file is one part


def parsing_processes(as_copy_text: bool) -> int:
    """Written as COPY text, the rows cost the importing process next to nothing, and the parsing
    is shared by as many processes as there are cores (at most 4). Otherwise that process binds
    every value itself (SQLite, MySQL/MariaDB) and one parsing process keeps ahead of it: a second
    only takes the cores it needs (SQLite, 1M persons: 8.1 s either way, or 10.0 s against 8.6 s)."""
    if not as_copy_text:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), _MOST_PROCESSES))


@dataclass(frozen=True)
class Part:
    """Bytes ``start``..``end`` of the file: whole lines, the first of them line ``first_line``.
    ``plain``: they hold no double quote, backslash, NUL or tab (but a tab delimiter): each line
    is a record, split at its delimiters, and no value needs escaping as COPY text."""

    start: int
    end: int
    first_line: int
    plain: bool = False


_LONE_CR = re.compile(rb"\r(?!\n)")


def _line_breaks(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Line breaks as a file opened with ``newline=""`` reads them: \\n, \\r\\n, a lone \\r."""
    breaks = data.count(b"\n", start, end)
    # a lone \r is rare, and looking for one costs half of counting \r\n (a file of \r\n lines)
    if _LONE_CR.search(data, start, len(data) if end is None else end):
        breaks += data.count(b"\r", start, end) - data.count(b"\r\n", start, end)
    return breaks


def cut_into_parts(
    path: Path, start: int, first_line: int, part_bytes: int, delimiter: str = ","
) -> Generator[Part, None, None]:
    """The file from byte ``start`` (the start of a record, on line ``first_line``) cut into parts
    of about ``part_bytes``, each ending after a line break with an even number of double quotes
    since the part began: where a record ends in a well-formed file. A part grown to
    ``_LONGEST_PART`` times that without one (a stray quote: the count never comes back even)
    ends after its last line break anyway: a record is far shorter, and a wrong guess is noticed.
    Line breaks, quotes, tabs and NUL are single bytes in UTF-8, GBK and GB18030 alike (no byte of a
    multi-byte character is below 0x40 but in GB18030's four-byte forms, whose digits 0x30-0x39
    are neither); a backslash can be the second byte of a GBK character, which only makes a part
    not plain that was. A NUL byte makes a part not plain (the import refuses a file holding one)."""
    special = [b'"', b"\\", b"\0"] + ([] if delimiter == "\t" else [b"\t"])
    part_start, line = start, first_line
    position = start  # of the chunk read next
    quotes = 0  # from ``part_start`` to ``position``
    lines = 0  # line breaks from ``part_start`` to ``position``
    marked = False  # a special byte from ``part_start`` to ``position``
    pending_cr = False  # the last chunk ended with \\r: a \\n opening the next one is its pair
    with path.open("rb") as fh:
        fh.seek(start)
        while chunk := fh.read(part_bytes):
            if pending_cr and chunk[:1] == b"\n":
                lines -= 1
            pending_cr = chunk[-1:] == b"\r"
            cut = chunk.rfind(b"\n") + 1
            quoting = chunk.find(b'"') >= 0  # counting costs thirty times looking
            quoted = quotes + (chunk.count(b'"', 0, cut) if quoting else 0)
            grown = position + cut - part_start >= _LONGEST_PART * part_bytes
            if cut and (quoted % 2 == 0 or grown):
                plain = not marked and not any(chunk.find(b, 0, cut) >= 0 for b in special)
                yield Part(part_start, position + cut, line, plain)
                line += lines + _line_breaks(chunk, 0, cut)
                part_start, lines, quotes = position + cut, _line_breaks(chunk, cut), 0
                marked = any(chunk.find(b, cut) >= 0 for b in special)
            else:
                lines += _line_breaks(chunk)
                quotes = quoted
                marked = marked or any(chunk.find(b) >= 0 for b in special)
            quotes += chunk.count(b'"', cut) if quoting else 0
            position += len(chunk)
    if position > part_start:
        yield Part(part_start, position, line, not marked)


def _one_part(part: Part) -> Generator[Part, None, None]:
    yield part


def start_of_line(path: Path, part: Part, line: int, block_bytes: int = PART_BYTES) -> int:
    """The byte offset of line ``line`` within ``part`` (read ``block_bytes`` at a time)."""
    wanted = line - part.first_line  # line breaks to pass
    offset = part.start
    with path.open("rb") as fh:
        fh.seek(part.start)
        while wanted > 0 and (block := fh.read(block_bytes)):
            while block.endswith(b"\r") and (more := fh.read(1)):
                block += more  # a \r\n stays in one block, after any number of lone \r
            at, cr = 0, block.find(b"\r")
            while wanted > 0:
                lf = block.find(b"\n", at)
                if 0 <= cr < at:
                    cr = block.find(b"\r", at)
                if cr >= 0 and (lf < 0 or cr < lf):
                    at = cr + 2 if block[cr + 1 : cr + 2] == b"\n" else cr + 1
                elif lf >= 0:
                    at = lf + 1
                else:
                    break
                wanted -= 1
            if wanted == 0:
                return offset + at
            offset += len(block)
    return offset


class _Slice(io.RawIOBase):
    """Bytes ``start``..``end`` of a file, read as a file of their own."""

    def __init__(self, fh: io.BufferedReader, start: int, end: int) -> None:
        fh.seek(start)
        self._fh, self._left, self._read = fh, end - start, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self._left]
        n = self._fh.readinto(view)
        self._left -= n
        self._read += n
        return n

    def tell(self) -> int:
        return self._read


@dataclass
class Parsed:
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # values, import id, line
    # line, original text, column, reason
    rejects: list[tuple[int, str, str | None, str]] = field(default_factory=list)
    read: int = 0  # bytes of the file read since the chunk before
    # the rows as COPY text in the client encoding (str: a value it cannot hold)
    text: bytes | str = b""
    count: int = 0  # rows handed over


def copy_text(rows: list[tuple[str, ...]], width: int) -> str:
    """Rows of text values as PostgreSQL's COPY text with ``NULL ''``: an empty value is a NULL.
    Checked once for the whole chunk; only a chunk holding a backslash, a tab or a line break in
    a value has its values escaped one by one."""
    try:
        text = "\n".join(map("\t".join, rows))
        plain = not (
            "\\" in text
            or "\r" in text
            or text.count("\n") != len(rows) - 1
            or text.count("\t") != len(rows) * (width - 1)
        )
    except TypeError:  # a value that is not text: never from the import's row plan
        plain = False
    if not plain:
        text = "\n".join("\t".join(map(_escaped, row)) for row in rows)
    return text + "\n" if rows else ""


def _escaped(value: Any) -> str:
    if value is None:
        return ""
    return (
        str(value)
        .replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


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


def _fork_server() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    # the server imports this module (and SQLAlchemy) once, and each process is forked with it:
    # not imported by each (0.33 s of CPU apiece). Once the server runs, this is ignored.
    context.set_forkserver_preload([__name__])
    return context


def start_fork_server() -> None:
    """Start the server the parsing processes are forked from now, to import this module while
    the import's first statements run (its lock, its ledger row: 0.15 s on PostgreSQL) rather than
    after them, when the first process is started (0.25 s)."""
    _fork_server()
    multiprocessing.forkserver.ensure_running()


def _targets(kind: str) -> tuple[list[Any], Table]:
    if kind == "persons":
        return PERSON_FIELDS, schema.register
    return APPLICATION_FIELDS, schema.applications


class ParsingProcesses:
    """``with ParsingProcesses(table, kind, driver, import_id) as parsing: for chunk in
    parsing.chunks(): …``: the file's rows in its order.

    The parts are cut as the parsing goes (cutting reads the whole file: a second's work at 10M
    persons, done while the processes parse): part i goes to process i mod n, each process holding
    a few parts ahead."""

    _AHEAD = 2  # parts handed to each process beyond the one it parses

    def __init__(
        self,
        table: TableFile,
        kind: str,
        driver: str,
        import_id: int,
        *,
        copy_encoding: str | None = None,
    ) -> None:
        self._table = table
        self._job = (kind, driver, import_id, copy_encoding)
        self._processes = parsing_processes(copy_encoding is not None)
        self._part_bytes = PART_BYTES
        self._children: list[Any] = []
        self._inboxes: list[multiprocessing.connection.Connection] = []
        self._outboxes: list[multiprocessing.connection.Connection] = []
        self._handed = 0  # parts handed to the processes started last
        self.restarts = 0  # parts found to end inside a record

    def __enter__(self) -> ParsingProcesses:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _start(self, processes: int) -> None:
        context = _fork_server()
        for n in range(processes):
            parts_in, parts_out = context.Pipe(duplex=False)
            rows_in, rows_out = context.Pipe(duplex=False)
            child = context.Process(
                target=_parse,
                args=(self._table, *self._job, parts_in, rows_out),
                name=f"hukou-parse-{n + 1}",
                daemon=True,
            )
            child.start()
            parts_in.close()  # the child's ends: its end of file is the child's end
            rows_out.close()
            self._children.append(child)
            self._inboxes.append(parts_out)
            self._outboxes.append(rows_in)
        self._handed = 0

    def _stop(self) -> None:
        for child in self._children:
            if child.is_alive():
                child.terminate()
            child.join()
        for pipe in (*self._inboxes, *self._outboxes):
            pipe.close()
        self._children, self._inboxes, self._outboxes = [], [], []

    def chunks(self) -> Iterator[Parsed]:
        path, size = self._table.path, self._table.size
        start, line, last_cut = 0, 1, 0
        while True:
            if self._processes == 1 or self.restarts >= _MOST_RESTARTS:
                self._start(1)
                parts = _one_part(Part(start, size, line))  # to the end: never cut
            else:
                self._start(self._processes)
                parts = cut_into_parts(path, start, line, self._part_bytes, self._table.delimiter)
            with contextlib.closing(parts):
                cut = yield from self._parse_parts(parts)
            self._stop()
            if cut is None:
                return
            self.restarts += 1
            if cut.line == last_cut:  # the same record cut again: it runs on past its part
                self.restarts = _MOST_RESTARTS
            start, line, last_cut = start_of_line(path, cut.part, cut.line), cut.line, cut.line
            # the bytes of the cut part before its record, less those already counted (they
            # can be more: negative)
            yield Parsed(read=start - cut.part.start - cut.read)

    def _parse_parts(self, parts: Iterator[Part]) -> Generator[Parsed, None, _Cut | None]:
        """The rows of ``parts`` in order, or where the first part cut inside a record was."""
        handed: collections.deque[Part] = collections.deque()  # in order, not yet taken
        processes = len(self._children)  # part i went to process i mod processes
        for _ in range(processes * (1 + self._AHEAD)):
            self._hand(next(parts, None), handed)
        taken = 0
        while handed:
            part, n, read = handed.popleft(), taken % processes, 0
            while True:
                message = self._receive(n)
                if message[0] == "cut":  # ("cut", the first line of the record cut)
                    return _Cut(part, int(message[1]), read)
                _, rows, text, count, rejects, bytes_read, last = message
                if text is None:  # the COPY text follows as bytes of its own
                    text = self._receive_bytes(n)
                read += bytes_read
                yield Parsed(rows, rejects, bytes_read, text, count)
                if last:
                    break
            taken += 1
            self._hand(next(parts, None), handed)
        return None

    def _hand(self, part: Part | None, handed: collections.deque[Part]) -> None:
        """The next part to its process; None: there are no more, to any."""
        if part is None:
            for inbox in self._inboxes:
                if not inbox.closed:
                    with contextlib.suppress(BrokenPipeError):
                        inbox.send_bytes(marshal.dumps(None))
                    inbox.close()
            return
        inbox = self._inboxes[self._handed % len(self._inboxes)]
        with contextlib.suppress(BrokenPipeError):  # it ended: its outbox says why, in turn
            inbox.send_bytes(marshal.dumps((part.start, part.end, part.first_line, part.plain)))
        self._handed += 1
        handed.append(part)

    def _receive_bytes(self, n: int) -> bytes:
        try:
            return self._outboxes[n].recv_bytes()
        except EOFError:
            self._children[n].join(timeout=1)  # its exit code, once it is known
            raise InputFileError(
                str(self._table.path),
                f"the process parsing the file ended (exit code {self._children[n].exitcode})"
                " before the end of the file; nothing was imported",
            ) from None

    def _receive(self, n: int) -> Any:
        message = marshal.loads(self._receive_bytes(n))
        if message[0] == "undecodable":  # ("undecodable", the part's first line, why)
            _, line, reason = message
            raise UnprovenBytes(
                str(self._table.path),
                f"cannot be decoded as {self._table.encoding} ({reason}) in the lines from this"
                " one; nothing was imported",
                int(line),
            )
        if message[0] == "error":  # ("error", exit code, message)
            _, code, text = message
            error = HukouError(text)
            error.exit_code = int(code)
            raise error
        return message


class _Cut(NamedTuple):
    part: Part
    line: int  # the first line of the record the part ends inside
    read: int  # bytes of the part counted so far


def _parse(
    table: TableFile,
    kind: str,
    driver: str,
    import_id: int,
    copy_encoding: str | None,
    parts: Any,
    out: Any,
) -> None:
    """A child: the rows of each part it is handed, a chunk at a time into ``out``; each part's
    last chunk says so. ``copy_encoding``: as COPY text in that encoding (None: as values)."""
    try:
        fields, target = _targets(kind)
        dialect = make_url(f"{driver}://").get_dialect()()
        columns = RowPlan(table, fields, target).columns
        converters = bind_converters(target, columns, dialect)
        for name in columns:
            column_type = target.c[name].type
            if isinstance(getattr(column_type, "impl_instance", column_type), (Date, DateTime)):
                converters[name] = _as_text(converters.get(name))
        plan = RowPlan(table, fields, target, converters, None if copy_encoding is None else "")
        as_text = (  # the columns, the import id, the line
            None if copy_encoding is None else _CopyText(len(plan.columns) + 2, copy_encoding)
        )
        cut = False
        with table.path.open("rb") as fh:
            while (handed := marshal.loads(parts.recv_bytes())) is not None:
                part = Part(*handed)
                try:
                    # after a cut the parts handed since are not read: the parsing starts again
                    cut = cut or not _parse_part(table, plan, import_id, as_text, fh, part, out)
                except UnicodeDecodeError as err:  # a file opened on its first lines only
                    out.send_bytes(marshal.dumps(("undecodable", part.first_line, err.reason)))
                    return
    except HukouError as err:
        out.send_bytes(marshal.dumps(("error", err.exit_code, err.message())))
    except Exception as err:  # never a value in the message: the type only
        message = f"parsing {table.path.name} failed: {type(err).__name__}"
        out.send_bytes(marshal.dumps(("error", 1, message)))
    finally:
        out.close()


def _parse_part(
    table: TableFile,
    plan: RowPlan,
    import_id: int,
    as_text: _CopyText | None,
    fh: io.BufferedReader,
    part: Part,
    out: Any,
) -> bool:
    """One part's rows into ``out`` (``as_text``: as COPY text); False if it
    ends inside a record (said to ``out``)."""
    key: Any = str(import_id) if as_text else import_id
    encoding = table.encoding or "utf-8"
    if encoding == "utf-8" and part.start == 0:
        encoding = "utf-8-sig"  # a byte order mark only at the start of the file
    text = io.TextIOWrapper(
        io.BufferedReader(_Slice(fh, part.start, part.end)), encoding=encoding, newline=""
    )
    if part.plain and as_text is not None:
        _parse_plain_part(table, plan, key, as_text, text, part, out)
        return True
    chunk = Parsed()
    lines: list[str] = []  # as COPY text: the chunk's rows as COPY lines, in the file's order

    def advance(n: int) -> None:
        chunk.read += n

    def send(last: bool) -> None:
        nonlocal chunk
        _send(out, chunk, as_text, lines, last=last)
        chunk = Parsed()
        lines.clear()

    # as COPY text, most rows are written by the row plan's fast path as they are read
    take = None if as_text is None else plan.copy_take(key, lines, _CHUNK_ROWS, lambda: send(False))
    records = csv_records(
        text,
        table.delimiter,
        advance,
        first_line=part.first_line,
        after_header=part.start == 0,
        to_the_end=part.end >= table.size,
        take=take,
    )
    try:
        for row in records:
            if _parse_row(plan, row, key, as_text, chunk, lines) >= _CHUNK_ROWS:
                send(False)
    except RecordCutOff as cut:
        chunk.read = 0  # the process taking the rows counts the part up to the record cut
        send(False)
        out.send_bytes(marshal.dumps(("cut", cut.line)))
        return False
    send(True)
    return True


def _parse_plain_part(
    table: TableFile,
    plan: RowPlan,
    key: str,
    as_text: _CopyText,
    text: io.TextIOWrapper,
    part: Part,
    out: Any,
) -> None:
    """:func:`_parse_part` of a plain part as COPY text: each line is a record, and the row
    plan's :meth:`~rowplan.RowPlan.copy_lines` writes line after line until one it leaves to
    :meth:`~rowplan.RowPlan.parse`, read here as the CSV reader would read it."""
    lines: list[str] = []
    chunk = Parsed()
    take = plan.copy_lines(key, lines, table.delimiter)
    line = part.first_line
    if part.start == 0:
        text.readline()  # the header, already read by open_table (one line: no quotes)
        line += 1
    while block := text.readlines(_BLOCK_CHARS):
        at, count = 0, len(block)
        while at < count:
            at = take(block, at, line + at)
            if at == count:
                break
            cells = line_record(block[at], table.delimiter)
            if not is_blank_record(cells):
                row = Row(line + at, cast("list[Cell]", cells), block[at].rstrip("\r\n"))
                _parse_row(plan, row, key, as_text, chunk, lines)
            at += 1
        line += count
        if len(lines) >= _CHUNK_ROWS:
            _send(out, chunk, as_text, lines, last=False)
            chunk = Parsed()
            lines.clear()
    chunk.read = part.end - part.start  # the part's bytes at once: a part is about a megabyte
    _send(out, chunk, as_text, lines, last=True)


def _parse_row(
    plan: RowPlan, row: Row, key: Any, as_text: _CopyText | None, chunk: Parsed, lines: list[str]
) -> int:
    """The careful path for one record: its values into ``chunk`` (as COPY text: its line into
    ``lines``), or its reject; the rows now held, to hand them over at ``_CHUNK_ROWS``."""
    outcome = plan.parse(row.cells, row.line, row.formulas)
    if isinstance(outcome, Reject):
        chunk.rejects.append((row.line, row.original, outcome.column, outcome.reason))
    elif outcome is None:
        pass  # nothing to load (xlsx: formulas without a value in columns not read)
    elif as_text is None:
        chunk.rows.append((*outcome, key, row.line))
    else:
        lines.append(copy_text([(*outcome, key, str(row.line))], as_text.width))
    return len(chunk.rows) if as_text is None else len(lines)


class _CopyText(NamedTuple):
    width: int  # values in a row
    encoding: str  # the connection's client encoding


def _send(
    out: Any, chunk: Parsed, as_text: _CopyText | None, lines: list[str], *, last: bool
) -> None:
    """A chunk into ``out``: its rows, or as COPY text its ``lines`` encoded here: the importing
    process hands the bytes to the driver as they are, instead of decoding them and having the
    driver encode them again (1M persons: 0.3 s less of its CPU). A value the client encoding
    cannot hold stays text, and the driver names the problem as it would."""
    rows, count = chunk.rows, len(chunk.rows)
    text: bytes | str = b""
    if as_text is not None:
        rows, count, written = [], len(lines), "".join(lines)
        try:
            text = written.encode(as_text.encoding)
        except UnicodeEncodeError:
            text = written
    raw = isinstance(text, bytes) and len(text) > 0
    message = ("rows", rows, None if raw else text, count, chunk.rejects, chunk.read, last)
    out.send_bytes(marshal.dumps(message))
    if raw:  # as they are: marshal would copy them twice more (1M persons: 0.2 s of CPU here)
        out.send_bytes(text)
