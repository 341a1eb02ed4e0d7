"""A legacy register converted where it lives: its own table, Chinese column names, numeric combined
codes (GA 324.1 table C.3) and its own resident codes 11 / 12, through a mapping file. Check,
rehearsal, cutover, verify and rollback in place; the table's structure and every column but the
converted one untouched."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, inspect, select, text, update

from hukou_convert import schema
from hukou_convert.checks import run_checks
from hukou_convert.cli import cli
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.errors import ChangedSinceCutoverError, UnmappedCodesError
from hukou_convert.instants import CST
from hukou_convert.mapping import MappingError, load_mapping
from hukou_convert.profiles import load_profile, resolve_cutoff
from hukou_convert.rollback import rollback_run
from hukou_convert.verify import verify_run

from .helpers import ident
from .legacy import PROFILE, PROFILE_WITH_5, create_legacy, legacy_key, legacy_table

H = schema.history
CODE = "户口类别"


@pytest.fixture(params=[False, True], ids=["integer-key", "text-key"])
def text_key(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _structure(engine: Engine) -> Any:
    insp = inspect(engine)
    name = legacy_table(False).name
    columns = [
        (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
        for c in insp.get_columns(name)
    ]
    indexes = sorted(
        (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
        for i in insp.get_indexes(name)
    )
    return columns, indexes, insp.get_pk_constraint(name)["constrained_columns"]


def _rows(engine: Engine, text_key: bool, without: str | None = None) -> list[tuple[Any, ...]]:
    """Every row, every column (but ``without``), in key order."""
    table = legacy_table(text_key)
    columns = [c for c in table.c if c.name != without]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*columns).order_by(table.c["人员编号"]))]


def _codes(engine: Engine, text_key: bool) -> dict[int, str]:
    """Code by record number (101, 102, …, whatever the key's type)."""
    table = legacy_table(text_key)
    with engine.connect() as conn:
        return {
            int(str(k).lstrip("P")): str(c)
            for k, c in conn.execute(select(table.c["人员编号"], table.c[CODE]))
        }


def _where(text_key: bool, key: int) -> Any:
    return legacy_table(text_key).c["人员编号"] == legacy_key(key, text_key)


def _setup(
    engine: Engine, tmp_path: Path, rows: int = 120, text_key: bool = False
) -> tuple[Any, Any, Any]:
    mapping, profile_file = create_legacy(engine, tmp_path, rows=rows, text_key=text_key)
    profile_file.write_text(PROFILE_WITH_5, encoding="utf-8")
    profile = load_profile(str(profile_file))
    return load_mapping(engine, mapping), profile, resolve_cutoff(profile, None)


def test_cutover_in_place_converts_the_code_column_and_nothing_else(
    engine: Engine, tmp_path: Path, text_key: bool
) -> None:
    reg, profile, cutoff = _setup(engine, tmp_path, text_key=text_key)
    structure, before, others = (
        _structure(engine),
        _rows(engine, text_key),
        _rows(engine, text_key, without=CODE),
    )
    original_codes = _codes(engine, text_key)

    rehearsal = rehearse(engine, profile, cutoff, register=reg)
    assert rehearsal.unmapped == []
    assert _rows(engine, text_key) == before  # a rehearsal writes nothing
    run = run_cutover(engine, profile, cutoff, register=reg, batch_size=17)
    assert run.outcome == "completed" and run.converted == rehearsal.converted

    codes = _codes(engine, text_key)
    # 非农业/农业家庭户口 -> this system's 居民家庭户口 11; 集体户口 -> 居民集体户口 12, never 11
    assert [codes[k] for k in (101, 102, 103, 104, 109)] == ["11", "11", "12", "12", "11"]
    # already resident, not in the permanent register, cancelled, out of scope: untouched
    assert [codes[k] for k in (105, 106, 107, 108)] == ["11", "0", "2", "2"]
    converted = {k for k in codes if codes[k] != original_codes[k]}
    assert len(converted) == run.converted
    assert _structure(engine) == structure
    assert (
        _rows(engine, text_key, without=CODE) == others
    )  # every other column, every row, as it was

    with engine.connect() as conn:
        rows = conn.execute(select(H).where(H.c.run_id == run.run_id)).all()
        # the register's key, in the column of its type
        keys = [r.record_key if text_key else r.record_id for r in rows]
        assert all((r.record_id if text_key else r.record_key) is None for r in rows)
        history = {
            int(str(k).lstrip("P")): (r.original_code, r.household_category, r.original_nature)
            for k, r in zip(keys, rows, strict=True)
        }
        kept = conn.execute(
            select(schema.runs.c.register_mapping).where(schema.runs.c.run_id == run.run_id)
        ).scalar_one()
    assert set(history) == converted
    assert legacy_key(104, text_key) in keys
    # the history keeps the raw code as it was in that column
    assert history[104] == ("4", "COLLECTIVE", "AGRICULTURAL")
    assert history[109] == ("5", "FAMILY", "SELF_SUPPLIED_GRAIN")
    assert kept is not None and "常住人口" in kept

    assert verify_run(engine, run.run_id).ok  # finds the legacy table through the run
    again = rehearse(engine, profile, cutoff, register=reg)
    assert again.converted == 0 and again.census.already_resident == run.census.in_scope_active - 1

    result = rollback_run(engine, str(run.run_id), batch_size=13)
    assert result.restored == run.converted
    assert _rows(engine, text_key) == before  # the register exactly as before the cutover
    assert _structure(engine) == structure
    assert verify_run(engine, run.run_id).ok


def test_a_code_without_category_refuses_the_cutover_before_writing(
    engine: Engine, tmp_path: Path
) -> None:
    mapping, profile_file = create_legacy(engine, tmp_path)
    profile = load_profile(str(profile_file))  # code 5 names no 户别 in this profile
    reg, cutoff = load_mapping(engine, mapping), resolve_cutoff(profile, None)
    before = _rows(engine, False)
    rehearsal = rehearse(engine, profile, cutoff, register=reg)
    assert [(v.raw_code, v.count, v.no_category) for v in rehearsal.unmapped] == [("5", 1, True)]
    with pytest.raises(UnmappedCodesError, match="name no 户别") as err:
        run_cutover(engine, profile, cutoff, register=reg)
    assert err.value.exit_code == 6
    assert _rows(engine, False) == before
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.runs)).scalar_one() == 0


def test_checks_run_on_the_legacy_columns(engine: Engine, tmp_path: Path, text_key: bool) -> None:
    reg, profile, cutoff = _setup(engine, tmp_path, rows=0, text_key=text_key)
    table = legacy_table(text_key)
    with engine.begin() as conn:
        # 性别 coded 2 (女) on a number whose sequence digit is odd (男); a duplicated number
        conn.execute(update(table).where(_where(text_key, 101)).values({"性别": "2"}))
        number = conn.execute(
            select(table.c["公民身份号码"]).where(_where(text_key, 102))
        ).scalar_one()
        conn.execute(update(table).where(_where(text_key, 103)).values({"公民身份号码": number}))
    report = run_checks(engine, profile, cutoff=cutoff.instant, register=reg)
    found = {(f.code, f.record_id) for f in report.findings}
    key = legacy_key
    assert ("SEX_MISMATCH", key(101, text_key)) in found
    assert {
        ("DUPLICATE_ID_NUMBER", key(102, text_key)),
        ("DUPLICATE_ID_NUMBER", key(103, text_key)),
    } <= found
    # the table has no 户别 or 与户主关系 column: not an exception of every record
    assert report.counts["MISSING_FIELD"] == 0 and report.counts["HOUSEHOLD_WITHOUT_HEAD"] == 0


def test_rollback_in_place_compares_the_wall_clock_change_time_in_china_time(
    engine: Engine, tmp_path: Path, text_key: bool
) -> None:
    """变更时间 is a timestamp without time zone, China Standard Time: a change an hour before the
    cutover is not a change since it (read as UTC it would be 7 hours after), one a minute after
    is."""
    reg, profile, cutoff = _setup(engine, tmp_path, rows=20, text_key=text_key)
    table = legacy_table(text_key)
    wall_now = datetime.now(CST).replace(tzinfo=None, microsecond=0)
    with engine.begin() as conn:
        conn.execute(
            update(table)
            .where(_where(text_key, 101))
            .values({"变更时间": wall_now - timedelta(hours=1)})
        )
    run = run_cutover(engine, profile, cutoff, register=reg)
    with engine.begin() as conn:
        conn.execute(
            update(table)
            .where(_where(text_key, 102))
            .values({"变更时间": wall_now + timedelta(minutes=1)})
        )
    with pytest.raises(ChangedSinceCutoverError) as err:
        rollback_run(engine, str(run.run_id))
    assert err.value.record_keys == [legacy_key(102, text_key)]
    result = rollback_run(engine, str(run.run_id), skip_changed=True)
    assert (result.restored, result.skipped_changed) == (run.converted - 1, 1)
    assert _codes(engine, text_key)[101] == "1" and _codes(engine, text_key)[102] == "11"


def test_a_key_that_is_not_integer_or_short_text_is_refused(engine: Engine, tmp_path: Path) -> None:
    mapping, _ = create_legacy(engine, tmp_path)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE 长键人口 (编号 VARCHAR(100) PRIMARY KEY, 号码 VARCHAR(18),"
                " 类别 VARCHAR(4), 区划 VARCHAR(12), 状态 VARCHAR(2))"
            )
        )
    mapping.write_text(
        """
[register]
table = "长键人口"
key = "编号"
[columns]
id_number = "号码"
hukou_type = "类别"
division_code = "区划"
status = "状态"
[values]
active = ["1"]
resident_family = "11"
resident_collective = "12"
""",
        encoding="utf-8",
    )
    with pytest.raises(MappingError, match="text column of at most 64 characters"):
        load_mapping(engine, mapping)


def test_the_commands_in_place(db_url: str, tmp_path: Path, text_key: bool) -> None:
    from hukou_convert.db import make_engine, parse_url

    engine = make_engine(parse_url(db_url))
    mapping, profile_file = create_legacy(engine, tmp_path, rows=60, text_key=text_key)
    profile_file.write_text(PROFILE_WITH_5, encoding="utf-8")
    before = _rows(engine, text_key)
    runner = CliRunner()
    common = ["--db", db_url, "-q"]
    inplace = ["--mapping", str(mapping), "-p", str(profile_file)]

    def run(*args: str) -> Any:
        result = runner.invoke(cli, [*args, *common])
        assert result.exit_code == 0, result.output
        return result

    assert "SEX_MISMATCH" in run("check", *inplace).output
    out = tmp_path / "reports"
    rehearsal = run("cutover", *inplace, "--dry-run", "--out", str(out)).output
    assert "演练 REHEARSAL" in rehearsal and "table 常住人口" in rehearsal
    assert _rows(engine, text_key) == before
    real = run("cutover", *inplace, "--yes", "--out", str(out)).output
    with engine.connect() as conn:
        run_id = conn.execute(select(schema.runs.c.run_id)).scalar_one()
    assert f"正式 CUTOVER run {run_id}: completed" in real
    assert _codes(engine, text_key)[104] == "12"
    run("verify")  # no --mapping: the run knows its register
    number = conn_number(engine, text_key, 104)
    answer = run("lookup", number, "--format", "json", "--unmasked").output
    assert '"original_code": "4"' in answer and "旧系104" in answer
    run("report", "--run", run_id, "--out", str(tmp_path / "again"))
    assert list((tmp_path / "again").glob("*.xlsx"))
    run("stats", "--run", run_id, "--out", str(tmp_path / "stats.xlsx"))
    booklets = run("booklets", "--run", run_id, "--out", str(tmp_path / "booklets")).output
    assert "households" in booklets
    from openpyxl import load_workbook

    from .test_workbook import summary as summary_of

    [workbook] = (tmp_path / "again").glob("*.xlsx")
    summary = summary_of(load_workbook(workbook)["概要"])
    assert summary["登记库表"] == "常住人口"
    run("rollback", "--run", run_id, "--yes", "--out", str(out))
    assert _rows(engine, text_key) == before
    engine.dispose()


def conn_number(engine: Engine, text_key: bool, key: int) -> str:
    table = legacy_table(text_key)
    with engine.connect() as conn:
        return str(
            conn.execute(select(table.c["公民身份号码"]).where(_where(text_key, key))).scalar_one()
        )


def test_lookup_names_come_from_the_register_the_run_converted(
    engine: Engine, tmp_path: Path
) -> None:
    """The built-in register may hold another person under the same record key."""
    from hukou_convert.history import lookup
    from hukou_convert.ingest import import_register

    from .helpers import ident, person, write_register

    other = write_register(tmp_path / "builtin.csv", [person(ident("330211", "19900101", 1), "2")])
    import_register(engine, other)  # record 1 of the built-in register: someone else
    reg, profile, cutoff = _setup(engine, tmp_path, rows=0)
    table = legacy_table(False)
    with engine.begin() as conn:
        conn.execute(update(table).where(_where(False, 102)).values({"人员编号": 1}))
        number = conn.execute(select(table.c["公民身份号码"]).where(_where(False, 1))).scalar_one()
    run_cutover(engine, profile, cutoff, register=reg)
    [found] = lookup(engine, [number])
    assert [(e.name, e.original_code) for e in found.entries] == [("旧系102", "2")]


@pytest.mark.slow
def test_killed_cutover_in_place_resumes_to_the_uninterrupted_result(
    db_url: str, tmp_path: Path
) -> None:
    """Text keys: the ledger keeps the last key as text and the resume compares it as the key
    column's type (integer keys resume through the same code, and the built-in register's
    twenty-kill tests cover them)."""
    from hukou_convert.db import make_engine, parse_url

    text_key = True

    from .test_resume import _cli, _wait_for_batches

    engine = make_engine(parse_url(db_url))
    mapping, profile_file = create_legacy(engine, tmp_path, rows=6_000, text_key=text_key)
    profile_file.write_text(PROFILE_WITH_5, encoding="utf-8")
    others = _rows(engine, text_key, without=CODE)
    cutover = ("cutover", "--mapping", str(mapping), "-p", str(profile_file), "--yes", "-q")
    proc = _cli(db_url, *cutover, "--batch-size", "40", "--out", str(tmp_path / "r1"))
    _wait_for_batches(engine, proc, 5)
    proc.kill()
    proc.wait()
    with engine.connect() as conn:
        assert conn.execute(select(schema.runs.c.status)).scalar_one() == "running"
    proc = _cli(db_url, *cutover, "--out", str(tmp_path / "r2"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resumed and completed" in out
    codes = _codes(engine, text_key)
    for i in range(6_000):  # generated with codes 1 2 2 2 3 4 11 in turn
        was = ("1", "2", "2", "2", "3", "4", "11")[i % 7]
        assert codes[1000 + i] == {"1": "11", "2": "11", "3": "12", "4": "12"}.get(was, was)
    assert _rows(engine, text_key, without=CODE) == others
    with engine.connect() as conn:
        history = conn.execute(select(func.count()).select_from(H)).scalar_one()
        twice = conn.execute(
            select(H.c.record_id, H.c.record_key)
            .group_by(H.c.record_id, H.c.record_key)
            .having(func.count() > 1)
        ).all()
    legacy_codes = sum(1 for i in range(6_000) if i % 7 != 6)  # all but the 11s, once each
    assert history == legacy_codes + 5 and not twice
    assert verify_run(engine).ok
    engine.dispose()


def test_an_unfinished_run_in_place_is_not_continued_on_another_register(
    engine: Engine, tmp_path: Path
) -> None:
    from hukou_convert.errors import RunMismatchError

    from .helpers import record_unfinished_run

    reg, profile, cutoff = _setup(engine, tmp_path, rows=0)
    schema.ensure_schema(engine)
    profile = reg.effective_profile(profile)
    record_unfinished_run(engine, "R-in-place", register=reg, profile=profile, cutoff=cutoff)
    with pytest.raises(RunMismatchError, match="R-in-place is unfinished with the register of"):
        run_cutover(engine, profile, cutoff)  # the built-in register
    assert run_cutover(engine, profile, cutoff, register=reg).outcome == "resumed"


# A register that keeps 户别 in a column of its own, coded 1 / 2, beside combined codes.
HOUSEHOLD_TABLE = "户籍人员"
HOUSEHOLD_MAPPING = """
[register]
table = "户籍人员"
key = "编号"
[columns]
id_number = "身份号码"
hukou_type = "户口类别"
household_category = "户别"
division_code = "区划"
status = "状态"
updated_at = "变更时间"
[values]
active = ["1"]
family = ["1"]
collective = ["2"]
resident_family = "11"
resident_collective = "12"
"""


def _household_table(
    engine: Engine, on_update: bool = False, code_type: str = "VARCHAR(4)"
) -> None:
    changed = "DATETIME(6) NOT NULL DEFAULT '2016-06-01 09:00:00'"
    if on_update:  # MySQL/MariaDB stamps it on every UPDATE unless told otherwise
        changed += " ON UPDATE CURRENT_TIMESTAMP(6)"
    elif engine.dialect.name == "postgresql":
        changed = "TIMESTAMP NOT NULL DEFAULT '2016-06-01 09:00:00'"
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE {HOUSEHOLD_TABLE} (编号 INTEGER PRIMARY KEY, 身份号码 VARCHAR(18),"
                f" 户口类别 {code_type}, 户别 VARCHAR(2), 区划 VARCHAR(12), 状态 VARCHAR(2),"
                f" 变更时间 {changed})"
            )
        )
        rows = [
            (1, "2", "1"),  # 农业家庭户口, 户别 1 = 家庭户
            (2, "4", "2"),  # 农业集体户口
            (3, "5", "2"),  # 自理口粮: 户别 from the column, 2 = 集体户 -> 12
            (4, "5", "1"),  # 自理口粮 in a family household -> 11
        ]
        for key, code, category in rows:
            conn.execute(
                text(
                    f"INSERT INTO {HOUSEHOLD_TABLE} (编号, 身份号码, 户口类别, 户别, 区划, 状态)"
                    " VALUES (:k, :n, :c, :h, '330211001001', '1')"
                ),
                {"k": key, "n": ident("330211", "19800101", key * 2 + 1), "c": code, "h": category},
            )


def _household_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(r) for r in conn.execute(text(f"SELECT * FROM {HOUSEHOLD_TABLE} ORDER BY 编号"))
        ]


def test_a_household_column_of_its_own_values_is_read_never_written(
    engine: Engine, tmp_path: Path
) -> None:
    """户别 coded 1 / 2: read through the mapping (a code naming no 户别 takes the column's),
    never overwritten with the tool's labels; a blank one refuses the run before writing."""
    _household_table(engine)
    mapping = tmp_path / "household.toml"
    mapping.write_text(HOUSEHOLD_MAPPING, encoding="utf-8")
    profile_file = tmp_path / "profile.toml"
    profile_file.write_text(PROFILE, encoding="utf-8")  # 5 takes its 户别 from the column
    with engine.begin() as conn:  # 自理口粮 with no 户别 at all: the code to write is unknown
        conn.execute(text(f"UPDATE {HOUSEHOLD_TABLE} SET 户口类别 = '6', 户别 = '' WHERE 编号 = 4"))
    profile = load_profile(str(profile_file))
    reg, cutoff = load_mapping(engine, mapping), resolve_cutoff(profile, None)
    before = _household_rows(engine)
    with pytest.raises(UnmappedCodesError, match="name no 户别"):
        run_cutover(engine, profile, cutoff, register=reg)
    assert _household_rows(engine) == before
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE {HOUSEHOLD_TABLE} SET 户口类别 = '5', 户别 = '1' WHERE 编号 = 4")
        )
    before = _household_rows(engine)
    run = run_cutover(engine, profile, cutoff, register=reg)
    after = _household_rows(engine)
    assert [r[2] for r in after] == ["11", "12", "12", "11"]
    # every other column, 户别 included, exactly as it was
    assert [r[:2] + r[3:] for r in after] == [r[:2] + r[3:] for r in before]
    with engine.connect() as conn:
        kept = conn.execute(
            select(H.c.original_category_label, H.c.household_category).order_by(H.c.record_id)
        ).all()
    assert [tuple(k) for k in kept] == [
        ("1", "FAMILY"),
        ("2", "COLLECTIVE"),
        ("2", "COLLECTIVE"),
        ("1", "FAMILY"),
    ]
    assert verify_run(engine, run.run_id).ok
    rollback_run(engine, str(run.run_id))
    assert _household_rows(engine) == before
    assert verify_run(engine, run.run_id).ok


def test_a_change_time_the_database_stamps_on_update_is_left_alone(
    db_url: str, tmp_path: Path
) -> None:
    from hukou_convert.db import make_engine, parse_url

    if not db_url.startswith("mysql"):
        pytest.skip("ON UPDATE CURRENT_TIMESTAMP is MySQL/MariaDB's")
    engine = make_engine(parse_url(db_url))
    _household_table(engine, on_update=True)
    mapping = tmp_path / "household.toml"
    mapping.write_text(HOUSEHOLD_MAPPING, encoding="utf-8")
    profile_file = tmp_path / "profile.toml"
    profile_file.write_text(PROFILE, encoding="utf-8")  # 5 takes its 户别 from the column
    profile = load_profile(str(profile_file))
    reg, cutoff = load_mapping(engine, mapping), resolve_cutoff(profile, None)
    before = _household_rows(engine)
    run = run_cutover(engine, profile, cutoff, register=reg)
    assert [r[-1] for r in _household_rows(engine)] == [r[-1] for r in before]
    rollback_run(engine, str(run.run_id))  # nothing looks changed since the cutover
    assert _household_rows(engine) == before
    engine.dispose()


def test_the_same_mapping_from_another_file_is_the_same_register(
    engine: Engine, tmp_path: Path
) -> None:
    from hukou_convert.errors import RunMismatchError
    from hukou_convert.profiles import ResolvedCutoff

    reg, profile, cutoff = _setup(engine, tmp_path, rows=0)
    run_cutover(engine, profile, cutoff, register=reg)
    copy = tmp_path / "elsewhere" / "copy.toml"
    copy.parent.mkdir()
    copy.write_text(Path(reg.source).read_text(encoding="utf-8"), encoding="utf-8")
    other = load_mapping(engine, copy)
    later = ResolvedCutoff(cutoff.instant + timedelta(days=1), "another cutoff")
    with pytest.raises(RunMismatchError, match="already converted"):
        run_cutover(engine, profile, later, register=other)
    assert run_cutover(engine, profile, cutoff, register=other).outcome == "already-complete"


def test_a_char_code_column_reads_without_its_padding(engine: Engine, tmp_path: Path) -> None:
    """PostgreSQL reads CHAR(4) '2' back as '2   ': still the code 2, never an unmapped value."""
    _household_table(engine, code_type="CHAR(4)")
    mapping = tmp_path / "household.toml"
    mapping.write_text(HOUSEHOLD_MAPPING, encoding="utf-8")
    profile_file = tmp_path / "profile.toml"
    profile_file.write_text(PROFILE, encoding="utf-8")
    profile = load_profile(str(profile_file))
    reg, cutoff = load_mapping(engine, mapping), resolve_cutoff(profile, None)
    rehearsal = rehearse(engine, profile, cutoff, register=reg)
    assert rehearsal.unmapped == [] and rehearsal.converted == 4
    run = run_cutover(engine, profile, cutoff, register=reg)
    assert [str(r[2]).rstrip() for r in _household_rows(engine)] == ["11", "12", "12", "11"]
    with engine.connect() as conn:
        originals = conn.execute(select(H.c.original_code).order_by(H.c.record_id)).scalars()
        assert list(originals) == ["2", "4", "5", "5"]
    assert verify_run(engine, run.run_id).ok


def test_a_completed_register_is_not_read_through_another_mapping(
    engine: Engine, tmp_path: Path
) -> None:
    from hukou_convert.errors import RunMismatchError

    reg, profile, cutoff = _setup(engine, tmp_path, rows=0)
    run_cutover(engine, profile, cutoff, register=reg)
    # the same table through a mapping that reads other columns: refused, never "complete"
    swapped = tmp_path / "other.toml"
    mapping_text = Path(reg.source).read_text(encoding="utf-8")
    assert 'name = "姓名"\n' in mapping_text
    swapped.write_text(mapping_text.replace('name = "姓名"\n', ""), encoding="utf-8")
    other = load_mapping(engine, swapped)
    assert other.identity != reg.identity
    with pytest.raises(RunMismatchError, match="through another mapping"):
        run_cutover(engine, profile, cutoff, register=other)


def test_the_same_table_named_with_its_schema_is_the_same_register(
    engine: Engine, tmp_path: Path
) -> None:
    from hukou_convert.errors import RunMismatchError
    from hukou_convert.profiles import ResolvedCutoff

    reg, profile, cutoff = _setup(engine, tmp_path, rows=0)
    run_cutover(engine, profile, cutoff, register=reg)
    default = inspect(engine).default_schema_name
    named = tmp_path / "named.toml"
    named.write_text(
        Path(reg.source)
        .read_text(encoding="utf-8")
        .replace('table = "常住人口"', f'table = "常住人口"\nschema = "{default}"'),
        encoding="utf-8",
    )
    later = ResolvedCutoff(cutoff.instant + timedelta(days=1), "another cutoff")
    # recognised as the table the run converted (named otherwise, it would start a second run)
    with pytest.raises(RunMismatchError, match="converted this register through another mapping"):
        run_cutover(engine, profile, later, register=load_mapping(engine, named))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.runs)).scalar_one() == 1


def test_workers_convert_a_legacy_table_in_place_as_one_process_would(
    two_db_urls: tuple[str, str], tmp_path: Path, text_key: bool
) -> None:
    """Partitions of a legacy table's own key, text (cut at every n-th key) or integer (equal
    spans of its values), shared by two workers: every code as one process converts it."""
    from hukou_convert.db import make_engine, parse_url

    url, straight_url = two_db_urls
    if url.startswith("sqlite"):
        pytest.skip("SQLite takes one writer at a time: --workers is for the servers")
    codes = []
    for target, workers in ((straight_url, 1), (url, 2)):
        engine = make_engine(parse_url(target))
        (tmp_path / str(workers)).mkdir()
        reg, profile, cutoff = _setup(engine, tmp_path / str(workers), text_key=text_key)
        run = run_cutover(engine, profile, cutoff, register=reg, batch_size=7, workers=workers)
        assert verify_run(engine, run.run_id).ok
        codes.append(_codes(engine, text_key))
        with engine.connect() as conn:
            parts = conn.execute(
                select(schema.run_partitions.c.state).where(
                    schema.run_partitions.c.run_id == run.run_id
                )
            ).all()
        assert len(parts) == (8 if workers == 2 else 0)
        assert {p.state for p in parts} <= {"done"}
        engine.dispose()
    assert codes[1] == codes[0] and codes[0] != {}


def test_a_legacy_table_with_codes_in_a_collation_of_its_own_converts_and_rolls_back(
    pg_engine: Engine, tmp_path: Path
) -> None:
    """PostgreSQL: our codes are in "C"; a legacy table's ID numbers, household numbers and
    division codes in another collation named on the column (here "POSIX") cannot be compared
    with them as they are ("could not determine which collation to use"): the rollback, which
    compares each record's division code with the history's, names the collation it compares in."""
    mapping, profile_file = create_legacy(pg_engine, tmp_path, rows=40)
    with pg_engine.begin() as conn:
        for column, length in (("公民身份号码", 18), ("户号", 20), ("行政区划代码", 12)):
            conn.execute(
                text(
                    f'ALTER TABLE "常住人口" ALTER COLUMN "{column}"'
                    f' TYPE VARCHAR({length}) COLLATE "POSIX"'
                )
            )
    profile_file.write_text(PROFILE_WITH_5, encoding="utf-8")
    profile = load_profile(str(profile_file))
    reg, cutoff = load_mapping(pg_engine, mapping), resolve_cutoff(profile, None)
    before = _rows(pg_engine, False)

    run = run_cutover(pg_engine, profile, cutoff, register=reg, batch_size=17)
    assert run.outcome == "completed" and run.converted > 0
    assert verify_run(pg_engine, run.run_id).ok
    result = rollback_run(pg_engine, str(run.run_id), batch_size=13)
    assert result.restored == run.converted and result.skipped_changed == 0
    assert _rows(pg_engine, False) == before
