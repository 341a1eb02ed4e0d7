"""Rows into a table at the speed of the driver, inside the caller's SQLAlchemy transaction."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection, Dialect, Table, exc, insert

# A bind processor: what SQLAlchemy would do to a value before the driver sees it.
Convert = Callable[[Any], Any]


def bind_converters(
    target: Table, columns: tuple[str, ...], dialect: Dialect
) -> dict[str, Convert]:
    """The bind processors SQLAlchemy itself would apply to ``columns`` of ``target`` on
    ``dialect``: values are stored exactly as the rest of the tool stores them."""
    converters: dict[str, Convert] = {}
    for name in columns:
        proc = target.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None:
            converters[name] = proc
    return converters


class BulkInserter:
    """Inserts rows through the driver, inside the SQLAlchemy transaction of ``conn``: COPY on
    PostgreSQL (psycopg), executemany on SQLite, multi-row INSERTs on MySQL/MariaDB (PyMySQL
    rewrites executemany so). Values must have gone through ``converters`` first: the bind
    processors SQLAlchemy itself would apply, so that dates and instants are stored exactly as the
    rest of the tool stores them. Any other driver gets SQLAlchemy's own executemany (and no
    converters). Driver errors come out as SQLAlchemy's, so they are reported the same way."""

    def __init__(self, conn: Connection, target: Table, columns: tuple[str, ...]) -> None:
        self.conn = conn
        self.target = target
        self.columns = columns
        dialect = conn.dialect
        self.dialect = dialect
        quoted = ", ".join(dialect.identifier_preparer.quote(c) for c in columns)
        table_name = dialect.identifier_preparer.format_table(target)
        driver = dialect.driver
        self.mode = "sqlalchemy"
        self.statement = ""
        self.text_statement = ""
        marks = ""
        if dialect.name == "postgresql" and driver == "psycopg":
            self.mode = "copy"
            self.statement = f"COPY {table_name} ({quoted}) FROM STDIN"
            # rows already written as COPY text, every value text and an empty one a NULL
            self.text_statement = f"COPY {table_name} ({quoted}) FROM STDIN (NULL '')"
        elif dialect.name == "sqlite" and driver == "pysqlite":
            self.mode = "executemany"
            marks = ", ".join("?" for _ in columns)
        elif dialect.name in ("mysql", "mariadb") and driver == "pymysql":
            self.mode = "executemany"
            marks = ", ".join("%s" for _ in columns)
        if self.mode == "executemany":
            # names from our own schema, quoted by the dialect; values are bound
            self.statement = f"INSERT INTO {table_name} ({quoted}) VALUES ({marks})"  # noqa: S608
        self.converters: dict[str, Convert] = (
            bind_converters(target, columns, dialect) if self.mode != "sqlalchemy" else {}
        )

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        if self.mode == "sqlalchemy":
            self.conn.execute(
                insert(self.target), [dict(zip(self.columns, r, strict=True)) for r in rows]
            )
            return
        self._through_driver(self.statement, rows)

    def text_encoding(self) -> str:
        """The Python codec of the connection's client encoding: COPY text is sent in it."""
        raw = self.conn.connection.driver_connection
        return str(getattr(getattr(raw, "info", None), "encoding", "utf-8"))

    @contextlib.contextmanager
    def copy_stream(self) -> Iterator[Callable[[bytes | str], None]]:
        """One COPY of rows written as COPY text, each value escaped and an empty one a NULL
        (:mod:`parsing`), open for as long as the block lasts: the driver sends what it is given
        as it is (mode "copy" only). One statement for the whole file, not one per chunk."""
        if self.mode != "copy":
            raise AssertionError("COPY text is for PostgreSQL through psycopg")
        with (
            self._translated(self.text_statement) as cursor,
            cursor.copy(self.text_statement) as copy,
        ):
            dbapi = self.dialect.loaded_dbapi

            def write(data: bytes | str) -> None:
                try:
                    copy.write(data)
                except dbapi.Error as err:  # sending failed (a lost connection)
                    raise self._error(self.text_statement, err, cursor) from err

            yield write

    def _through_driver(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        with self._translated(statement) as cursor:
            if self.mode == "copy":
                with cursor.copy(statement) as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                cursor.executemany(statement, rows)

    @contextlib.contextmanager
    def _translated(self, statement: str) -> Iterator[Any]:
        """A cursor of the driver; its errors come out as SQLAlchemy's, without the values."""
        raw = self.conn.connection.driver_connection
        assert raw is not None
        dbapi = self.dialect.loaded_dbapi
        cursor = raw.cursor()
        try:
            yield cursor
        except dbapi.Error as err:
            raise self._error(statement, err, cursor) from err
        finally:
            cursor.close()

    def _error(self, statement: str, err: Any, cursor: Any) -> exc.StatementError:
        dbapi = self.dialect.loaded_dbapi
        raw = self.conn.connection.driver_connection
        error: exc.StatementError = exc.DBAPIError.instance(
            statement,
            None,
            err,
            dbapi.Error,
            hide_parameters=True,
            connection_invalidated=self.dialect.is_disconnect(err, raw, cursor),
            dialect=self.dialect,
        )
        return error


class InsertPipeline:
    """The inserts of ``writer`` on a thread of their own, so that the next chunk is parsed while
    the server takes the last: one chunk in flight, one waiting. Only the thread uses the
    connection until :meth:`close`; an insert error comes out of the next :meth:`put` or of
    :meth:`close`, and after an error the rest is not inserted. COPY text goes into one COPY,
    whose rows the server checks as they come but reports refused only at its end (libpq reads
    no answer while a COPY is sent): from :meth:`close`, after the whole file. The parsing has
    checked every value before, so the server refuses a row only where it and the parsing
    disagree; the import is rolled back all the same.

    Threaded for COPY on PostgreSQL only (1M rows: 13.8 s -> 11.2 s). SQLite binds and writes each
    row in the importing process, so a thread only contends for the GIL (12.4 s -> 13.4 s), and
    PyMySQL builds its INSERTs in Python (no change): there the inserts stay in line."""

    def __init__(self, writer: BulkInserter) -> None:
        self.writer = writer
        # an insert to run, or COPY text for the one COPY the thread holds open
        self._queue: queue.Queue[Callable[[], None] | bytes | str | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if writer.mode == "copy":
            self._thread = threading.Thread(target=self._run, name="hukou-insert", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        stream: contextlib.ExitStack | None = None  # the COPY open for put_text's chunks
        write: Callable[[bytes | str], None] | None = None
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                if isinstance(item, (bytes, str)):
                    if write is None:
                        stream = contextlib.ExitStack()
                        write = stream.enter_context(self.writer.copy_stream())
                    write(item)
                    continue
                if stream is not None:
                    self._end(stream)
                    stream = write = None
                    if self._error is not None:  # the COPY's own error, kept
                        continue
                item()
            except BaseException as err:  # handed to the caller's thread
                self._error = err
        if stream is not None:
            self._end(stream)

    def _end(self, stream: contextlib.ExitStack) -> None:
        """The open COPY completed (the server's error on its rows, if any, comes now), or after
        an error abandoned (the transaction is rolled back)."""
        error = self._error
        try:
            if error is None:
                stream.close()
            else:
                stream.__exit__(type(error), error, error.__traceback__)
        except BaseException as err:
            if self._error is None:
                self._error = err

    def put(self, rows: list[tuple[Any, ...]]) -> None:
        self._hand_over(lambda: self.writer.insert(rows))

    def put_text(self, text: bytes | str) -> None:
        """Rows as COPY text (:meth:`BulkInserter.copy_stream`), in the client encoding if bytes:
        every chunk into one COPY."""
        self._raise()
        if self._thread is None:
            raise AssertionError("COPY text is for PostgreSQL through psycopg")
        self._queue.put(text)

    def _hand_over(self, insert: Callable[[], None]) -> None:
        self._raise()
        if self._thread is None:
            insert()
        else:
            self._queue.put(insert)

    def close(self) -> None:
        """Wait for the last insert; raise its error, if any."""
        self.stop()
        self._raise()

    def stop(self) -> None:
        """Wait for the thread to end (after a failure elsewhere: its own error is not raised)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
