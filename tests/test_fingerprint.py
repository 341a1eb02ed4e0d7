"""The fingerprint read a chunk at a time is the row-by-row one; a plan's block digests compare the
register with the rehearsal's, reading again only the blocks that differ; the real run reads the
register beside its conversion and commits nothing before that reading's verdict."""

from __future__ import annotations

import hashlib
import json
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, delete, insert, select, text, update

from hukou_convert import fingerprint, plan, prewrite, schema
from hukou_convert.cutover import CutoverResult, rehearse, run_cutover
from hukou_convert.db import make_engine, parse_url
from hukou_convert.errors import PlanMismatchError
from hukou_convert.fingerprint import read_rows, register_fingerprint
from hukou_convert.ingest import ImportMode, import_register
from hukou_convert.mapping import load_mapping
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.progress import Advance
from hukou_convert.register import BUILTIN_REGISTER, RegisterMap
from hukou_convert.verify import verify_run

from .helpers import ident, person, table_dump, write_register
from .legacy import _record, create_legacy, legacy_table

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)
SAMPLE_ROWS = 328  # the sample register's rows the import loads (keys 1 … 328)


def _row_by_row(conn: Connection, register: RegisterMap) -> str:
    digest = hashlib.sha256()
    for _key, data in read_rows(conn, register):
        digest.update(data)
    return digest.hexdigest()


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 7 rows and plan blocks of 50: many of each on the sample register."""
    monkeypatch.setattr(fingerprint, "_DEFAULT_CHUNK_ROWS", 7)
    monkeypatch.setattr(fingerprint, "_CHUNK_ROWS", {})
    monkeypatch.setattr(fingerprint, "BLOCK_ROWS", 50)


def test_chunks_concatenate_the_rows_in_key_order(
    engine: Engine, sample_csv: Path, small_chunks: None
) -> None:
    import_register(engine, sample_csv)
    with engine.connect() as conn:
        rows = _row_by_row(conn, BUILTIN_REGISTER)
        chunked = register_fingerprint(conn, BUILTIN_REGISTER)
        blocks: list[fingerprint.Block] = []
        with_blocks = register_fingerprint(conn, BUILTIN_REGISTER, blocks=blocks)
    assert chunked == rows == with_blocks
    assert [b.rows for b in blocks] == [50] * 6 + [SAMPLE_ROWS - 300]
    assert blocks[0].last_key == "50" and blocks[-1].last_key == str(SAMPLE_ROWS)


def test_sqlite_concatenates_in_key_order_a_table_stored_out_of_it(
    sqlite_url: str, tmp_path: Path, small_chunks: None
) -> None:
    """SQLite's group_concat takes no ORDER BY before 3.44: it receives the rows in the order of
    its key-ordered subquery, here a text-keyed table whose rows were stored in reverse."""
    engine = make_engine(parse_url(sqlite_url))
    mapping, _profile = create_legacy(engine, tmp_path, rows=0, text_key=True)
    table = legacy_table(True)
    with engine.begin() as conn:
        conn.execute(delete(table))
        records = [_record(k, "2", "1", "330211001001", True) for k in range(1, 60)]
        conn.execute(insert(table), list(reversed(records)))
        query = 'SELECT "人员编号" FROM "常住人口" ORDER BY rowid'
        stored = [r[0] for r in conn.exec_driver_sql(query)]
    assert stored[0] == "P00059"  # stored out of key order
    register = load_mapping(engine, mapping)
    with engine.connect() as conn:
        assert register_fingerprint(conn, register) == _row_by_row(conn, register)
    engine.dispose()


def test_a_chunk_mysql_cuts_short_is_read_again_row_by_row(
    engine: Engine, sample_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine.dialect.name not in ("mysql", "mariadb"):
        pytest.skip("GROUP_CONCAT's length limit is MySQL/MariaDB's")
    import_register(engine, sample_csv)
    with engine.connect() as conn:
        whole = register_fingerprint(conn, BUILTIN_REGISTER)
        monkeypatch.setattr(fingerprint, "_MYSQL_CONCAT_LIMIT", 300)  # about two rows
        cut = register_fingerprint(conn, BUILTIN_REGISTER)
    assert cut == whole


def _edited_plan(engine: Engine, sample_csv: Path, tmp_path: Path) -> Path:
    """A plan of the sample register, then three records changed: 170 edited, 20 removed and
    one added after the last key (329)."""
    import_register(engine, sample_csv)
    plan_path = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path / "plan").plan_path
    assert plan_path is not None
    R = schema.register
    with engine.begin() as conn:
        conn.execute(update(R).where(R.c.record_id == 170).values(name="改了名"))
        conn.execute(delete(R).where(R.c.record_id == 20))
    extra = write_register(tmp_path / "late.csv", [person(ident("330211", "19800101", 1), "2")])
    import_register(engine, extra, mode=ImportMode.APPEND)
    return plan_path


def test_only_the_blocks_that_differ_are_read_again_record_by_record(
    engine: Engine,
    sample_csv: Path,
    tmp_path: Path,
    small_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan_path = _edited_plan(engine, sample_csv, tmp_path)
    blocks = json.loads(plan_path.read_text(encoding="utf-8"))["blocks"]
    assert [b[0] for b in blocks] == ["50", "100", "150", "200", "250", "300", str(SAMPLE_ROWS)]
    ranges = _rereads(monkeypatch, plan)
    before = table_dump(engine)
    with pytest.raises(PlanMismatchError) as err:
        run_cutover(engine, ZHENHAI, CUTOFF, expect=plan_path)
    assert [d for d in err.value.differences if d.startswith("record")] == [
        "record 20: removed since",
        "record 170: changed since",
        f"record {SAMPLE_ROWS + 1}: added since",
    ]
    # the first block (record 20), the fourth (170), and what follows the plan's last key
    assert ranges == [(None, "50"), ("150", "200"), (str(SAMPLE_ROWS), None)]
    assert table_dump(engine) == before


def test_a_plan_without_blocks_is_compared_record_by_record(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    """A plan written before block digests were kept still holds the run to every record."""
    plan_path = _edited_plan(engine, sample_csv, tmp_path)
    data = json.loads(plan_path.read_text(encoding="utf-8"))
    del data["blocks"]
    plan_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PlanMismatchError) as err:
        run_cutover(engine, ZHENHAI, CUTOFF, expect=plan_path)
    assert [d for d in err.value.differences if d.startswith("record")] == [
        "record 20: removed since",
        "record 170: changed since",
        f"record {SAMPLE_ROWS + 1}: added since",
    ]


class _Watch:
    """A progress callback that tells when the conversion has converted a batch and when its last
    batch is committed (its bar closed), and what an outside connection sees of runs."""

    def __init__(self, engine: Engine) -> None:
        self.converting = threading.Event()
        self.converted = threading.Event()
        self.outside = make_engine(engine.url)
        self.on_fingerprint: Any = None

    @contextmanager
    def __call__(self, phase: str, total: int | None, unit: str) -> Iterator[Advance]:
        first = [True]

        def advance(n: int) -> None:
            if phase.startswith("转换") and n:
                self.converting.set()
            if phase.startswith("指纹") and first[0] and self.on_fingerprint is not None:
                first[0] = False
                self.on_fingerprint()

        try:
            yield advance
        finally:
            if phase.startswith("转换"):
                self.converted.set()

    def runs_seen(self) -> int:
        with self.outside.connect() as conn:
            return len(conn.execute(select(schema.runs.c.run_id)).all())


def _runs_seen_at_the_fingerprint(
    engine: Engine, waiting_for: str, **options: Any
) -> tuple[list[int], CutoverResult]:
    """A cutover whose fingerprint, at its first rows, waits for the conversion to have
    ``converting`` (a batch converted) or ``converted`` (its last batch committed), then notes
    how many runs an outside connection sees."""
    watch = _Watch(engine)
    seen: list[int] = []

    def look() -> None:
        assert getattr(watch, waiting_for).wait(30), f"the conversion is not {waiting_for}"
        seen.append(watch.runs_seen())

    watch.on_fingerprint = look
    result = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=40, progress=watch, **options)
    watch.outside.dispose()
    return seen, result


def _rereads(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[tuple[Any, Any]]:
    """The key ranges ``module`` reads again row by row."""
    ranges: list[tuple[Any, Any]] = []

    def counted(conn: Connection, register: RegisterMap, after: Any, upto: Any) -> Iterator[Any]:
        ranges.append((after, upto))
        return read_rows(conn, register, after, upto)

    monkeypatch.setattr(module, "read_rows", counted)
    return ranges


def test_nothing_is_committed_before_the_census_is_taken(
    engine: Engine, sample_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The census (paused here until a batch is converted) is taken beside the conversion, and
    nobody sees a run before it: the run's first commit waits for its verdict."""
    from hukou_convert import prewrite

    import_register(engine, sample_csv)
    watch = _Watch(engine)
    seen: list[int] = []

    def census_when_converting(*args: Any) -> Any:
        assert watch.converting.wait(30), "the conversion did not start beside the reading"
        seen.append(watch.runs_seen())
        return prewrite_census(*args)

    prewrite_census = prewrite.take_census
    monkeypatch.setattr(prewrite, "take_census", census_when_converting)
    result = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=40, progress=watch)
    watch.outside.dispose()
    assert result.batches == 9 and seen == [0]
    assert verify_run(engine, result.run_id).ok


def test_the_fingerprint_is_the_register_before_the_run_though_the_run_commits_meanwhile(
    engine: Engine, sample_csv: Path
) -> None:
    """Without a plan the register is back in service before the fingerprint is finished: it is
    read from the snapshot taken before the run's writes."""
    import_register(engine, sample_csv)
    before = rehearse(engine, ZHENHAI, CUTOFF).fingerprint
    seen, result = _runs_seen_at_the_fingerprint(engine, "converted")
    assert seen == [1]  # the run and its batches committed while the fingerprint was being read
    assert result.fingerprint == before
    assert verify_run(engine, result.run_id).ok


def test_held_to_a_plan_nothing_is_committed_before_every_record_is_compared(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    import_register(engine, sample_csv)
    plan_path = rehearse(engine, ZHENHAI, CUTOFF, plan_dir=tmp_path).plan_path
    assert plan_path is not None
    with engine.begin() as conn:  # a write beside the register: on SQLite the run must read it
        conn.execute(text("CREATE TABLE operator_notes (note VARCHAR(10))"))
    seen, result = _runs_seen_at_the_fingerprint(engine, "converting", expect=plan_path)
    assert seen == [0]
    assert result.plan_comparison is not None and result.plan_comparison.matches


def test_sqlite_reads_a_copy_only_its_owner_can_read_that_is_gone_after_the_run(
    sqlite_url: str, sample_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(parse_url(sqlite_url))
    import_register(engine, sample_csv)
    before = rehearse(engine, ZHENHAI, CUTOFF).fingerprint
    copy = Path(str(engine.url.database) + ".hukou-read")
    copy.write_bytes(b"left by a run killed while it read")
    modes: list[int] = []
    copy_sqlite = prewrite._copy_sqlite

    def copied(path: str, to: Path) -> None:
        copy_sqlite(path, to)
        modes.append(stat.S_IMODE(to.stat().st_mode))

    monkeypatch.setattr(prewrite, "_copy_sqlite", copied)
    result = run_cutover(engine, ZHENHAI, CUTOFF)
    assert modes == [0o600]  # the register was read from the copy, not before converting
    assert result.fingerprint == before
    assert not copy.exists()
    engine.dispose()


def test_a_plan_takes_each_row_from_its_chunk_or_row_by_row_where_a_value_holds_a_newline(
    engine: Engine, tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rehearsal's row digests are cut from each chunk's lines; a chunk whose lines and rows do
    not tally (an address of two lines) is read again row by row: the digests, blocks and
    fingerprint are those of reading every row one at a time."""
    rows = [
        person(ident("330211", "19800101", 2 * i + 1), "2", household=f"H{i}") for i in range(30)
    ]
    rows[9]["住址"] = "第一行\n第二行"
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    again = _rereads(monkeypatch, fingerprint)
    digests: list[tuple[str, str]] = []
    blocks: list[fingerprint.Block] = []
    with engine.connect() as conn:
        fp = register_fingerprint(
            conn, BUILTIN_REGISTER, on_row=lambda k, d: digests.append((k, d)), blocks=blocks
        )
        expected = [
            (str(k), fingerprint.row_digest(text[:-1]))
            for k, text in read_rows(conn, BUILTIN_REGISTER)
        ]
        whole = _row_by_row(conn, BUILTIN_REGISTER)
    assert digests == expected and fp == whole
    assert again == [(7, 14)]  # only the chunk of record 10: the rows after 7 up to 14
    assert [(b.last_key, b.rows) for b in blocks] == [("30", 30)]
