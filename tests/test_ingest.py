"""Import: encodings, headers, xlsx, rejects with line and column, and a register never doubled."""

from __future__ import annotations

import csv
import io
import os
import stat
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook
from sqlalchemy import Engine, func, select

from hukou_convert import schema
from hukou_convert.errors import InputFileError, RegisterStateError
from hukou_convert.ingest import (
    ImportMode,
    default_reject_path,
    import_applications,
    import_register,
)
from hukou_convert.sample import PERSON_HEADER

from .conftest import SAMPLE
from .helpers import ident, person, table_dump, write_register


def _count(engine: Engine, table: object = schema.register) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def _names(engine: Engine) -> list[str]:
    R = schema.register
    with engine.connect() as conn:
        return list(conn.execute(select(R.c.name).order_by(R.c.record_id)).scalars())


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030"])
def test_encodings_are_detected(encoding: str, tmp_path: Path, sqlite_url: str) -> None:
    from hukou_convert.db import make_engine, parse_url

    name = "𠀀明" if encoding in ("utf-8", "utf-8-sig", "gb18030") else "张明"
    rows = [person(ident("330211", "19800101", 1), "2", name=name)]
    path = write_register(tmp_path / "r.csv", rows, encoding)
    engine = make_engine(parse_url(sqlite_url))
    result = import_register(engine, path)
    assert result.loaded == 1
    assert result.encoding == {"utf-8-sig": "utf-8"}.get(encoding, encoding)
    assert _names(engine) == [name]


def test_gb18030_only_characters_survive_every_database(engine: Engine, tmp_path: Path) -> None:
    rows = [person(ident("330211", "19800101", 1), "2", name="𠀀䶮明")]
    result = import_register(engine, write_register(tmp_path / "r.csv", rows, "gb18030"))
    assert result.encoding == "gb18030"
    assert _names(engine) == ["𠀀䶮明"]


def test_sample_csv_and_xlsx_load_the_same_register(engine: Engine, sample_csv: Path) -> None:
    from hukou_convert.db import make_engine, parse_url

    result = import_register(engine, sample_csv)
    assert (result.loaded, result.rejected, result.encoding) == (328, 3, "gbk")
    other = make_engine(parse_url(f"sqlite:///{sample_csv.parent / 'x.db'}"))
    xlsx = import_register(other, SAMPLE / "zhenhai_register.xlsx")
    assert (xlsx.loaded, xlsx.rejected) == (328, 3)
    R = schema.register
    cols = [c for c in R.columns if c.name not in ("import_id",)]
    with engine.connect() as a, other.connect() as b:
        rows_a = a.execute(select(*cols).order_by(R.c.record_id)).all()
        rows_b = b.execute(select(*cols).order_by(R.c.record_id)).all()
    assert rows_a == rows_b


def test_rejects_keep_line_column_reason_and_original(engine: Engine, tmp_path: Path) -> None:
    good = person(ident("330211", "19800101", 1), "2")
    bad_date = person(ident("330211", "19800101", 3), "2", birth="1980-02-30")
    bad_sex = person(ident("330211", "19800101", 5), "2", sex="X")
    path = write_register(tmp_path / "r.csv", [good, bad_date, bad_sex])
    with path.open("a", encoding="utf-8") as fh:  # a record with too few fields, and one unbalanced
        fh.write("1,2,3\n")
    rejects = tmp_path / "out" / "rej.csv"
    rejects.parent.mkdir()
    result = import_register(engine, path, reject_path=rejects)
    assert (result.loaded, result.rejected) == (1, 3)
    assert stat.S_IMODE(os.stat(rejects).st_mode) == 0o600
    with rejects.open(encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][0].startswith("行号")
    assert [r[0] for r in rows[1:]] == ["3", "4", "5"]
    assert rows[1][1] == "D (出生日期)" and "1980-02-30" in rows[1][2]
    assert rows[2][1] == "C (性别)"
    assert "fields where the header has 13" in rows[3][2]
    assert rows[3][3] == "1,2,3"
    assert rows[1][3].split(",")[0] == bad_date["公民身份号码"]  # the original line as read


def test_unbalanced_quote_is_rejected_not_swallowed(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    text = ",".join(PERSON_HEADER) + "\n"
    text += ",".join(person(ident("330211", "19800101", 1), "2").values()) + "\n"
    text += '"330211198001010030,broken"x,男\n'
    path.write_text(text, encoding="utf-8")
    result = import_register(engine, path)
    assert (result.loaded, result.rejected) == (1, 1)


def test_undecodable_file_loads_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write_register(tmp_path / "r.csv", [person(ident("330211", "19800101", 1), "2")])
    with path.open("ab") as fh:
        fh.write(b"\xff\xfe\xff broken\n")
    with pytest.raises(InputFileError) as err:
        import_register(engine, path)
    assert "line 3" in err.value.message() and "cannot be decoded" in err.value.message()
    assert schema.has_register(engine) is False or _count(engine) == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"\x00\x01\x02binary\x00", "NUL"),
        ("姓名,户号\n张三,1\n".encode(), "lacks required column"),
        ("公民身份号码,姓名,户号,户口性质,行政区划代码,身份证号\n".encode(), "both give id_number"),
        (b"PK\x03\x04garbage", "ZIP"),
    ],
)
def test_unreadable_files_are_one_clear_error(
    content: bytes, expected: str, tmp_path: Path, sqlite_url: str
) -> None:
    from hukou_convert.db import make_engine, parse_url

    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    engine = make_engine(parse_url(sqlite_url))
    with pytest.raises(InputFileError) as err:
        import_register(engine, path)
    assert expected in err.value.message()
    assert str(path) in err.value.message()


def test_missing_column_names_line_1(tmp_path: Path, sqlite_url: str) -> None:
    from hukou_convert.db import make_engine, parse_url

    path = tmp_path / "r.csv"
    path.write_text("公民身份号码,姓名,户号,行政区划代码\n1,2,3,4\n", encoding="utf-8")
    with pytest.raises(InputFileError) as err:
        import_register(make_engine(parse_url(sqlite_url)), path)
    assert err.value.line == 1 and "户口性质" in err.value.message()


def test_english_headers_in_any_order_with_extra_columns(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    number = ident("330211", "19800101", 1)
    path.write_text(
        "division_code,extra,hukou_type,household_id,name,id_number,sex,birth_date\n"
        f"330211001001,zzz,4,H9,王五,{number},2,19800101\n",
        encoding="utf-8",
    )
    assert import_register(engine, path).loaded == 1
    R = schema.register
    with engine.connect() as conn:
        row = conn.execute(select(R)).one()
    assert (row.id_number, row.hukou_type, row.sex, row.birth_date, row.status) == (
        number,
        "4",
        "女",
        date(1980, 1, 1),
        "正常",
    )


def test_xlsx_numbers_that_lost_digits_are_rejected(engine: Engine, tmp_path: Path) -> None:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(PERSON_HEADER)
    good = person(ident("330211", "19800101", 1), "2")
    ws.append(list(good.values()))
    as_number = list(person(ident("330211", "19800101", 3), "2", household="H2").values())
    as_number[0] = float(as_number[0][:17] + "1")  # an ID typed into Excel as a number
    ws.append(as_number)
    as_int_code = list(person(ident("330211", "19800101", 5), "2", household="H3").values())
    as_int_code[5] = 2  # a numeric code cell is fine
    ws.append(as_int_code)
    path = tmp_path / "r.xlsx"
    wb.save(path)
    result = import_register(engine, path)
    assert (result.loaded, result.rejected) == (2, 1)


def test_second_import_never_doubles_the_register(engine: Engine, sample_csv: Path) -> None:
    import_register(engine, sample_csv)
    before = table_dump(engine)
    with pytest.raises(RegisterStateError, match="--append"):
        import_register(engine, sample_csv)
    with pytest.raises(RegisterStateError, match="same SHA-256"):
        import_register(engine, sample_csv, mode=ImportMode.APPEND)
    assert table_dump(engine) == before
    replaced = import_register(engine, sample_csv, mode=ImportMode.REPLACE)
    assert replaced.loaded == 328
    assert _count(engine) == 328


def test_append_adds_another_file(engine: Engine, sample_csv: Path, tmp_path: Path) -> None:
    import_register(engine, sample_csv)
    extra = write_register(tmp_path / "more.csv", [person(ident("330211", "19800101", 1), "2")])
    assert import_register(engine, extra, mode=ImportMode.APPEND).loaded == 1
    assert _count(engine) == 329


def test_applications_load_with_rejects(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "apps.csv"
    number = ident("330211", "19800101", 1)
    path.write_text(
        "业务编号,公民身份号码,业务类型,申请时间,审批状态,审批时间\n"
        f"A1,{number},农转非,2016-08-01 10:00,已批准,2016-09-01 10:00\n"
        f"A2,{number},转户,2016-08-01 10:00,待审批,\n"
        f"A1,{number},农转非,2016-08-01 10:00,待审批,\n"
        f"A3,{number},非转农,2016-08-01,待审批,\n",
        encoding="gbk",
    )
    result = import_applications(engine, path)
    assert (result.loaded, result.rejected) == (2, 2)
    A = schema.applications
    with engine.connect() as conn:
        rows = conn.execute(select(A.c.application_id, A.c.kind).order_by(A.c.application_id)).all()
    assert [tuple(r) for r in rows] == [("A1", "农转非"), ("A3", "非转农")]


def test_import_waits_for_an_unfinished_run(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    """Records appended while a run is unfinished would meet its resume without being in its
    census: the import refuses."""
    from .helpers import record_unfinished_run

    import_register(engine, sample_csv)
    record_unfinished_run(engine, "R-unfinished")
    before = table_dump(engine)
    extra = write_register(tmp_path / "late.csv", [person(ident("330211", "19800101", 1), "2")])
    with pytest.raises(RegisterStateError, match="R-unfinished is unfinished"):
        import_register(engine, extra, mode=ImportMode.APPEND)
    assert table_dump(engine) == before


def test_insert_pipeline_hands_the_insert_error_over_and_stops() -> None:
    """The thread that inserts beside the parsing (COPY on PostgreSQL): its error comes out of the
    caller's next put or of close, and nothing after it is inserted."""

    from hukou_convert.bulk import InsertPipeline

    inserted: list[int] = []

    class Copying:
        mode = "copy"

        def insert(self, rows: list[tuple[Any, ...]]) -> None:
            if rows[0][0] == 2:
                raise RuntimeError("server gone")
            inserted.append(rows[0][0])

    pipeline = InsertPipeline(Copying())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="server gone"):
        for n in range(1, 6):
            pipeline.put([(n,)])
        pipeline.close()
    pipeline.stop()
    assert inserted == [1]  # the chunks after the failed one were not inserted


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_copy_text_chunks_go_into_one_copy_and_a_refused_row_rolls_back(engine: Engine) -> None:
    """COPY text handed over chunk by chunk (bytes in the client encoding, or text) goes into
    one COPY, an empty value as NULL; a row the server refuses in a later chunk comes out as
    SQLAlchemy's error from close (the server answers at the COPY's end), and the transaction
    keeps none of it."""
    from sqlalchemy.exc import DBAPIError

    from hukou_convert.bulk import BulkInserter, InsertPipeline

    schema.ensure_schema(engine)
    R = schema.register
    columns = ("id_number", "name", "birth_date", "import_id", "source_line")
    with engine.begin() as conn:
        pipeline = InsertPipeline(BulkInserter(conn, R, columns))
        encoding = pipeline.writer.text_encoding()
        pipeline.put_text("A1\t甲\t1980-01-01\t1\t2\n".encode(encoding))
        pipeline.put_text("A2\t乙\t\t1\t3\nA3\t丙\t1990-12-31\t1\t4\n")
        pipeline.close()
    stored = select(R.c.id_number, R.c.name, R.c.birth_date, R.c.source_line)
    with engine.connect() as conn:
        before = conn.execute(stored.order_by(R.c.record_id)).all()
    assert [tuple(r) for r in before] == [
        ("A1", "甲", date(1980, 1, 1), 2),
        ("A2", "乙", None, 3),
        ("A3", "丙", date(1990, 12, 31), 4),
    ]
    with pytest.raises(DBAPIError, match="out of range") as refused, engine.begin() as conn:
        pipeline = InsertPipeline(BulkInserter(conn, R, columns))
        try:
            for n in range(5, 40):
                day = "1980-02-30" if n == 8 else "1980-02-28"
                pipeline.put_text(f"B{n}\t丁\t{day}\t1\t{n}\n".encode(encoding))
            pipeline.close()
        finally:
            pipeline.stop()
    assert type(refused.value.orig).__name__ == "DatetimeFieldOverflow"  # the row, not the SQL
    assert _count(engine) == 3


def _import_both_ways(
    two_db_urls: tuple[str, str], path: Path, monkeypatch: pytest.MonkeyPatch, part_bytes: int
) -> tuple[list[Any], Engine, Engine]:
    """``path`` imported in one process, and by three parsing processes in parts of about
    ``part_bytes``: the register, every value's type as stored, the result and the reject file
    must be the same. The ParsingProcesses used are returned."""
    from hukou_convert import ingest, parsing
    from hukou_convert.db import make_engine, parse_url

    one_url, beside_url = two_db_urls
    one, beside = make_engine(parse_url(one_url)), make_engine(parse_url(beside_url))
    alone = import_register(one, path, reject_path=path.with_name("one.rejects.csv"))
    started: list[Any] = []

    class Counted(ingest.ParsingProcesses):
        def __enter__(self) -> ingest.ParsingProcesses:
            started.append(self)
            return super().__enter__()

    monkeypatch.setattr(ingest, "PARALLEL_FROM_BYTES", 0)
    monkeypatch.setattr(ingest, "ParsingProcesses", Counted)
    monkeypatch.setattr(parsing, "PART_BYTES", part_bytes)
    monkeypatch.setattr(parsing, "parsing_processes", lambda _as_copy_text: 3)
    parallel = import_register(beside, path, reject_path=path.with_name("beside.rejects.csv"))
    assert len(started) == 1
    assert (parallel.loaded, parallel.rejected) == (alone.loaded, alone.rejected)
    assert parallel.rejects_by_reason == alone.rejects_by_reason
    assert (
        path.with_name("beside.rejects.csv").read_bytes()
        == path.with_name("one.rejects.csv").read_bytes()
    )
    R = schema.register
    rows = select(*[c for c in R.c if c.name != "import_id"]).order_by(R.c.record_id)
    with one.connect() as a, beside.connect() as b:
        expected, actual = a.execute(rows).all(), b.execute(rows).all()
    assert actual == expected
    assert [tuple(map(type, r)) for r in actual] == [tuple(map(type, r)) for r in expected]
    return started, one, beside


def test_a_large_csv_is_parsed_beside_the_inserts_with_the_same_result(
    two_db_urls: tuple[str, str], sample_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large CSV file is parsed by processes of their own (here the sample register, made
    "large" for the test and cut into parts of a few lines): the same import as in one process."""
    started, one, beside = _import_both_ways(two_db_urls, sample_csv, monkeypatch, 500)
    with beside.connect() as conn:
        loaded = conn.execute(select(func.count()).select_from(schema.register)).scalar_one()
    assert loaded == 328
    assert started[0].restarts == 0
    one.dispose()
    beside.dispose()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk"])
def test_a_large_csv_cut_inside_a_quoted_field_is_read_as_in_one_process(
    two_db_urls: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """Quoted fields running over lines after a stray quote (which misleads the count of quotes
    the parts are cut by), every kind of line break, blank and bad records, and values COPY reads
    specially (a backslash, a tab, line breaks, "\\N"): the parts cut inside a record are read
    again from the record's first line, and the import is the one made in one process."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PERSON_HEADER)

    def row(seq: int, **fields: str) -> list[str]:
        values = person(ident("330211", "19800101", seq), "2", **fields)
        return [values.get(h, "") for h in PERSON_HEADER]

    for seq in range(1, 8):
        writer.writerow(row(seq))
    writer.writerow(row(8, name="反\\斜杠\t制表", address="\\N"))
    long_line = "很长的第二行" * 12  # the quoted field's closing line lies beyond the part
    writer.writerow(row(9, address=f"第一行\n{long_line}"))
    out.write(",".join(row(10, name='张"三')) + "\n")  # a stray quote, read as it is
    for seq in range(11, 15):
        writer.writerow(row(seq, address=f"回车换行\r\n{long_line}", name=f"甲{seq}"))
        writer.writerow(row(seq + 10, address=f"换行\n{long_line}\r独回车"))
    out.write("\n   ,  ,\n")  # a blank line, a row of blanks
    out.write(",".join(row(30))[:-3] + "\r")  # fewer fields, and a lone carriage return
    out.write(",".join(row(31)) + "\r\n")
    writer.writerow(row(32, name="超长" * 60))  # longer than the column: rejected
    for seq in range(33, 40):
        writer.writerow(row(seq, address=f"{seq}号\n{long_line}"))
    out.write(",".join(row(40)) + ',"unclosed\n')  # an unbalanced quote to the end of the file
    out.write(",".join(row(41)) + "\n")
    path = tmp_path / "hard.csv"
    path.write_text(out.getvalue(), encoding=encoding)

    started, one, beside = _import_both_ways(two_db_urls, path, monkeypatch, 64)
    assert started[0].restarts >= 1  # the case this test is for did happen
    with beside.connect() as conn:
        R = schema.register
        names = dict(conn.execute(select(R.c.source_line, R.c.name)).all())
        lines = set(conn.execute(select(R.c.source_line)).scalars())
    assert '张"三' in names.values() and "反\\斜杠\t制表" in names.values()
    assert len(lines) == 26  # every record but the blank ones, the bad ones and the long name
    one.dispose()
    beside.dispose()


def test_a_record_cut_again_at_its_first_line_ends_the_cutting(
    two_db_urls: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stray quote and a quoted field never closed in one record: its part ends with an even
    count of quotes but inside the record, and cut again from the record's line it would end
    there again. The rest of the file is read as one part: the import ends, as in one process
    (the unclosed field takes the rest of the file into one bad record)."""
    lines = [",".join(PERSON_HEADER)]
    for seq in range(1, 60):
        values = person(ident("330211", "19800101", seq), "2")
        cells = [values.get(h, "") for h in PERSON_HEADER]
        if seq == 6:
            cells[1] = '张"三'
            cells[-1] = '"备注'
        lines.append(",".join(cells))
    path = tmp_path / "unclosed.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    started, one, beside = _import_both_ways(two_db_urls, path, monkeypatch, 200)
    assert started[0].restarts >= 1
    with beside.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.register)).scalar_one() == 5
    one.dispose()
    beside.dispose()


def test_the_register_keeps_its_indexes_through_an_import_and_a_failed_one(
    engine: Engine, sample_csv: Path, tmp_path: Path
) -> None:
    """Into an empty register the indexes are built after the rows (PostgreSQL, SQLite: in the
    import's transaction); a failed import gives them back as they were."""
    from sqlalchemy import inspect

    def indexes() -> set[str]:
        return {str(ix["name"]) for ix in inspect(engine).get_indexes(schema.register.name)}

    expected = {str(ix.name) for ix in schema.register.indexes}
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "公民身份号码,姓名,户号,户口性质,行政区划代码,出生日期\n"
        f"{ident('330211', '19800101', 1)},甲,H1,2,330211001001,1980-02-30\n",
        encoding="utf-8",
    )
    with pytest.raises(InputFileError, match="no row could be loaded"):
        import_register(engine, bad)
    assert indexes() == expected
    import_register(engine, sample_csv)
    assert indexes() == expected
    import_register(engine, sample_csv, mode=ImportMode.REPLACE)
    assert indexes() == expected
    assert _count(engine) == 328


def test_codes_are_kept_in_byte_order_on_postgresql(pg_engine: Engine, sample_csv: Path) -> None:
    """ID numbers, household numbers and division codes in the "C" collation whatever the
    database's default: their indexes sort bytes, not a locale's comparison, and a search of ID
    numbers by prefix (the region of issue) is answered from the index."""
    from sqlalchemy import text

    import_register(pg_engine, sample_csv)
    with pg_engine.connect() as conn:
        in_c = set(
            conn.execute(
                text(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND collation_name = 'C'"
                )
            ).all()
        )
        conn.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(
            conn.execute(
                text("EXPLAIN SELECT record_id FROM hukou_register WHERE id_number LIKE '330211%'")
            ).scalars()
        )
    assert in_c == {
        ("hukou_register", "id_number"),
        ("hukou_register", "household_id"),
        ("hukou_register", "division_code"),
        ("hukou_type_history", "id_number"),
        ("hukou_type_history", "division_code"),
        ("hukou_applications", "id_number"),
        ("hukou_run_findings", "id_number"),
    }
    assert "ix_hukou_register_id_number" in plan


@pytest.fixture
def loaded_as_proven(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every person file "large": parsed beside the inserts and opened on its first lines (here
    256 bytes of them), the rest proven as it is loaded. Lists each open_table's ``whole``."""
    from hukou_convert import ingest, readers

    wholes: list[bool] = []
    opened = readers.open_table

    def counted(path: Path, encoding: str | None = None, *, whole: bool = True) -> Any:
        wholes.append(whole)
        return opened(path, encoding, whole=whole)

    monkeypatch.setattr(ingest, "PARALLEL_FROM_BYTES", 0)
    monkeypatch.setattr(ingest, "open_table", counted)
    monkeypatch.setattr(readers, "_CHUNK", 256)
    return wholes


def _rows_then(tmp_path: Path, tail: bytes, encoding: str = "utf-8") -> Path:
    rows = [person(ident("330211", "19800101", n), "2", name=f"P{n}") for n in range(1, 20)]
    path = write_register(tmp_path / "r.csv", rows, encoding)
    with path.open("ab") as fh:
        fh.write(tail)
    return path


def _imports(engine: Engine) -> list[Any]:
    if not schema.has_register(engine):
        return []
    with engine.connect() as conn:
        return list(conn.execute(select(schema.imports)).all())


def test_a_large_file_proven_as_it_loads_gets_its_sha256_and_appending_it_again_is_refused(
    engine: Engine, tmp_path: Path, loaded_as_proven: list[bool]
) -> None:
    """The SHA-256 of a file proven as it is loaded is the file's, taken beside the load: the
    same file appended again is refused (appending checks the whole file first)."""
    import hashlib

    path = _rows_then(tmp_path, b"")
    result = import_register(engine, path)
    assert (result.loaded, result.encoding) == (19, "utf-8")
    assert [i.file_sha256 for i in _imports(engine)] == [
        hashlib.sha256(path.read_bytes()).hexdigest()
    ]
    with pytest.raises(RegisterStateError, match="same SHA-256"):
        import_register(engine, path, mode=ImportMode.APPEND)
    assert loaded_as_proven == [False, True]


_FULL_ROW_WITH_NUL = ",".join(person(ident("330211", "19800101", 99), "2", name="甲\0乙").values())


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b"330211198001010999,\xff\xfe broken\n", "line 21: cannot be decoded as utf-8 or gbk or"),
        (b"330211198001010999,\x00\n", "line 21: contains NUL bytes"),
        # loaded as it is by the CSV reader: PostgreSQL refuses it in the COPY, before the proof
        (_FULL_ROW_WITH_NUL.encode() + b"\n", "line 21: contains NUL bytes"),
    ],
)
def test_a_large_file_failing_beyond_its_first_lines_loads_nothing_and_names_the_line(
    engine: Engine, tmp_path: Path, loaded_as_proven: list[bool], tail: bytes, expected: str
) -> None:
    """A byte beyond the lines the encoding was chosen by that no encoding decodes, or a NUL
    byte: the load rolls back, the whole file is checked and that check's message names the
    line; nothing is imported, no reject file is left."""
    path = _rows_then(tmp_path, tail)
    with pytest.raises(InputFileError) as err:
        import_register(engine, path)
    assert expected in err.value.message()
    assert loaded_as_proven == [False, True]
    assert _imports(engine) == [] and (not schema.has_register(engine) or _count(engine) == 0)
    assert not default_reject_path(path).exists()


def test_a_large_gbk_file_looking_like_utf8_at_first_is_loaded_again_as_gbk(
    engine: Engine, tmp_path: Path, loaded_as_proven: list[bool]
) -> None:
    """Its first lines read as UTF-8 (all ASCII), a GBK name further on: the load as UTF-8 rolls
    back and the file is loaded again in the encoding its whole-file check chooses."""
    lines = ["id_number,name,sex,birth_date,household_id,hukou_type,division_code"]
    for n in range(1, 20):
        lines.append(f"{ident('330211', '19800101', n)},P{n},1,1980-01-01,H{n},2,330211001001")
    lines.append(f"{ident('330211', '19800101', 20)},张三,1,1980-01-01,H20,2,330211001001")
    path = tmp_path / "r.csv"
    path.write_bytes("\n".join(lines).encode("gbk") + b"\n")
    result = import_register(engine, path)
    assert loaded_as_proven == [False, True]
    assert (result.encoding, result.loaded, result.rejected) == ("gbk", 20, 0)
    assert [(i.encoding, i.loaded) for i in _imports(engine)] == [("gbk", 20)]
    assert "张三" in _names(engine)
