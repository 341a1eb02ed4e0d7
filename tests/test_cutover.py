"""The cutover end to end through the core, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from hukou_convert import schema
from hukou_convert.codes import Category, Nature
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.errors import Aborted, RunMismatchError, UnmappedCodesError
from hukou_convert.history import lookup
from hukou_convert.ingest import ImportMode, import_register
from hukou_convert.profiles import BUILTIN_PROFILES, load_profile, resolve_cutoff
from hukou_convert.verify import verify_run

from .helpers import conversion_state, ident, person, table_dump, write_register

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)


def _sample(engine: Engine, sample_csv: Path) -> None:
    import_register(engine, sample_csv)


def test_rehearsal_writes_nothing_and_predicts_the_cutover(
    engine: Engine, sample_csv: Path
) -> None:
    _sample(engine, sample_csv)
    before = table_dump(engine)
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF)
    assert table_dump(engine) == before
    result = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=37)
    assert result.outcome == "completed"
    assert result.converted == rehearsal.converted == rehearsal.census.to_convert
    assert result.converted_by == rehearsal.converted_by
    assert result.census.lines == rehearsal.census.lines


def test_sample_cutover_counts_history_and_categories(engine: Engine, sample_csv: Path) -> None:
    _sample(engine, sample_csv)
    result = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=50)
    census = result.census
    # 328 loaded (3 of 331 rejected): 1 out of scope (Wenzhou), 7 inactive (注销/死亡)
    assert census.total == 328
    assert census.out_of_scope == 1
    assert census.inactive == 7
    assert (
        census.to_convert + census.already_resident + census.not_permanent == census.in_scope_active
    )
    R, H = schema.register, schema.history
    with engine.connect() as conn:
        history = conn.execute(select(H)).all()
        legacy_left = conn.execute(
            select(func.count())
            .select_from(R)
            .where(R.c.status == "正常", R.c.division_code.like("330211%"))
            .where(
                R.c.hukou_type.notin_(
                    [
                        "居民户口",
                        "居民家庭户口",
                        "居民集体户口",
                        "0",
                        "7",
                        "未落常住户口",
                        "暂住户口",
                    ]
                )
            )
        ).scalar_one()
        by_name = {
            r.name: r
            for r in conn.execute(
                select(R.c.name, R.c.hukou_type, R.c.household_category, R.c.status)
            )
        }
    assert legacy_left == 0
    assert len(history) == result.converted == census.to_convert
    assert {h.new_type for h in history} == {"RESIDENT"}
    assert {h.effective_at for h in history} == {
        datetime(2016, 10, 1, tzinfo=timezone(timedelta(hours=8)))
    }
    # the category survives: 农业集体户口 becomes 居民户口 + 集体户, never a family household
    assert (by_name["集体丙"].hukou_type, by_name["集体丙"].household_category) == (
        "居民户口",
        "集体户",
    )
    assert (by_name["集体乙"].hukou_type, by_name["集体乙"].household_category) == (
        "居民户口",
        "集体户",
    )
    assert by_name["宿舍丁"].household_category == "集体户"
    # untouched: inactive, out of scope, not in the permanent register, already resident
    assert by_name["注销戊"].hukou_type == "2"
    assert by_name["温州庚"].hukou_type == "2"
    assert by_name["样0甲"].hukou_type == "0"
    assert by_name["样7甲"].hukou_type == "7"
    assert by_name["居民1"].hukou_type == "居民家庭户口"
    natures = Counter((h.original_code, h.original_nature, h.household_category) for h in history)
    assert natures[("4", "AGRICULTURAL", "COLLECTIVE")] >= 1
    assert natures[("农业", "AGRICULTURAL", "COLLECTIVE")] == 1  # bare label + 户别 集体户
    assert natures[("蓝印户口", "BLUE_STAMP", "FAMILY")] == 1
    assert natures[("自理口粮户口", "SELF_SUPPLIED_GRAIN", "FAMILY")] == 1
    assert natures[("地方城镇居民户口", "LOCAL_URBAN", "FAMILY")] == 1
    assert verify_run(engine).ok


def test_rerun_after_completion_does_nothing(engine: Engine, sample_csv: Path) -> None:
    _sample(engine, sample_csv)
    first = run_cutover(engine, ZHENHAI, CUTOFF)
    state = table_dump(engine)
    again = run_cutover(engine, ZHENHAI, CUTOFF)
    assert again.outcome == "already-complete"
    assert again.run_id == first.run_id
    assert again.converted == first.converted
    assert table_dump(engine) == state


def test_batch_size_does_not_change_the_result(db_url: str, tmp_path: Path) -> None:
    from hukou_convert.db import make_engine, parse_url

    rows = [
        person(ident("330211", "19800101", 2 * i + 1), "2" if i % 3 else "1", household=f"H{i}")
        for i in range(120)
    ]
    csv_path = write_register(tmp_path / "r.csv", rows)
    engine = make_engine(parse_url(db_url))
    import_register(engine, csv_path)
    run_cutover(engine, ZHENHAI, CUTOFF, batch_size=7)
    batches = None
    with engine.connect() as conn:
        batches = conn.execute(select(func.count()).select_from(schema.run_batches)).scalar_one()
    assert batches == 18  # ceil(120 / 7): one ledger row per committed batch
    state = conversion_state(engine)
    engine.dispose()

    other = make_engine(parse_url(f"sqlite:///{tmp_path / 'other.db'}"))
    import_register(other, csv_path)
    run_cutover(other, ZHENHAI, CUTOFF, batch_size=1000)
    assert conversion_state(other) == state


def test_unmapped_value_stops_the_real_run_before_any_write(engine: Engine, tmp_path: Path) -> None:
    rows = [
        person(ident("330211", "19800101", 1), "2"),
        person(ident("330211", "19800101", 3), "99", household="H2"),
        person(ident("330211", "19800101", 5), "99", household="H3"),
        # unmapped but out of scope: does not block
        person(ident("330302", "19800101", 7), "XX", division="330302001001", household="H4"),
    ]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    before = table_dump(engine)
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF)
    assert [(v.raw_code, v.count) for v in rehearsal.unmapped] == [("99", 2)]
    with pytest.raises(UnmappedCodesError) as err:
        run_cutover(engine, ZHENHAI, CUTOFF)
    assert "'99': 2" in err.value.message()
    assert table_dump(engine) == before


def test_not_confirmed_writes_nothing(engine: Engine, sample_csv: Path) -> None:
    _sample(engine, sample_csv)
    before = table_dump(engine)
    seen = []

    def refuse(plan: object) -> bool:
        seen.append(plan)
        return False

    with pytest.raises(Aborted):
        run_cutover(engine, ZHENHAI, CUTOFF, confirm=refuse)
    assert len(seen) == 1
    assert table_dump(engine) == before


def test_a_second_cutover_with_another_cutoff_is_refused(engine: Engine, sample_csv: Path) -> None:
    _sample(engine, sample_csv)
    run_cutover(engine, ZHENHAI, CUTOFF)
    forced = resolve_cutoff(ZHENHAI, "2016-10-15 00:00", force=True)
    with pytest.raises(RunMismatchError):
        run_cutover(engine, ZHENHAI, forced)


def test_lookup_finds_original_type(engine: Engine, tmp_path: Path) -> None:
    collective = ident("330211", "20000101", 22)
    resident = ident("330211", "19850505", 52)
    rows = [
        person(collective, "4", category="", name="集体丙"),
        person(resident, "居民户口", household="H2"),
    ]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    result = run_cutover(engine, ZHENHAI, CUTOFF)
    found = lookup(engine, [collective.lower(), resident, "123"])
    assert found[0].status == "found"
    entry = found[0].entries[0]
    assert (entry.name, entry.original_code, entry.original_label) == (
        "集体丙",
        "4",
        "农业集体户口",
    )
    assert (entry.original_nature, entry.household_category) == (
        Nature.AGRICULTURAL,
        Category.COLLECTIVE,
    )
    assert entry.run_id == result.run_id
    assert entry.effective_at == CUTOFF.instant
    assert found[1].status == "not-found"  # already resident: never converted
    assert found[2].status == "invalid"


def test_user_profile_file_maps_local_codes(engine: Engine, tmp_path: Path) -> None:
    profile_file = tmp_path / "local.toml"
    profile_file.write_text(
        'name = "zhenhai-local"\nbase = "zhenhai"\n'
        '[codes."10"]\naction = "convert"\nnature = "NON_AGRICULTURAL"\ncategory = "FAMILY"\n'
        'label = "非农业家庭户口"\n',
        encoding="utf-8",
    )
    profile = load_profile(str(profile_file))
    rows = [person(ident("330211", "19800101", 1), "10")]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    with pytest.raises(UnmappedCodesError):
        run_cutover(engine, ZHENHAI, CUTOFF)
    result = run_cutover(engine, profile, resolve_cutoff(profile, None))
    assert result.converted == 1
    assert (
        lookup(engine, [rows[0]["公民身份号码"]])[0].entries[0].original_label == "非农业家庭户口"
    )


def test_fingerprint_is_the_same_for_rehearsal_and_run(engine: Engine, sample_csv: Path) -> None:
    _sample(engine, sample_csv)
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF)
    result = run_cutover(engine, ZHENHAI, CUTOFF)
    assert len(rehearsal.fingerprint) == 64
    assert result.fingerprint == rehearsal.fingerprint
    # after the conversion the register is another one
    assert rehearse(engine, ZHENHAI, CUTOFF).fingerprint != rehearsal.fingerprint


def test_codes_compare_exactly_on_every_database(engine: Engine, tmp_path: Path) -> None:
    """MySQL's default collation would take 'a1' for 'A1': a value the table does not map would
    be converted. The tool's tables compare codes exactly everywhere."""
    profile_file = tmp_path / "letters.toml"
    profile_file.write_text(
        'name = "letters"\nbase = "zhenhai"\n'
        '[codes."A1"]\naction = "convert"\nnature = "NON_AGRICULTURAL"\ncategory = "FAMILY"\n',
        encoding="utf-8",
    )
    profile = load_profile(str(profile_file))
    rows = [
        person(ident("330211", "19800101", 1), "A1"),
        person(ident("330211", "19800101", 3), "a1", household="H2"),
    ]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    rehearsal = rehearse(engine, profile, resolve_cutoff(profile, None))
    assert [(v.raw_code, v.count) for v in rehearsal.unmapped] == [("a1", 1)]
    assert rehearsal.converted == 1
    with pytest.raises(UnmappedCodesError):
        run_cutover(engine, profile, resolve_cutoff(profile, None))


def test_fingerprint_does_not_depend_on_the_session_time_zone(
    db_url: str, sample_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hukou_convert.db import make_engine, parse_url

    engine = make_engine(parse_url(db_url))
    _sample(engine, sample_csv)
    first = rehearse(engine, ZHENHAI, CUTOFF).fingerprint
    engine.dispose()
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")  # what an operator's terminal might have
    monkeypatch.setenv("PGDATESTYLE", "SQL, DMY")
    other = make_engine(parse_url(db_url))
    assert rehearse(other, ZHENHAI, CUTOFF).fingerprint == first
    other.dispose()


def test_fingerprint_is_the_same_on_every_database(sample_csv: Path, tmp_path: Path) -> None:
    """The same export imported into SQLite, PostgreSQL and MariaDB reads as the same register: a
    rehearsal on one and a cutover held to its plan on another compare record by record."""
    from contextlib import ExitStack, contextmanager

    from hukou_convert.db import make_engine, parse_url

    from .conftest import BACKENDS, _fresh_database

    # instants in Asia/Shanghai's summer time of 1986-1991 and before 1901: the tool's +08:00
    extra = write_register(
        tmp_path / "extra.csv",
        [
            person(ident("330211", "19700101", 11), "1", household="X1", updated=moment)
            for moment in ("1988-07-01 12:00:00", "1900-06-01 08:00:00")
        ],
    )
    fingerprints = {}
    with ExitStack() as stack:
        for backend in BACKENDS:
            (tmp_path / backend).mkdir()
            url = stack.enter_context(contextmanager(_fresh_database)(backend, tmp_path / backend))
            engine = make_engine(parse_url(url))
            _sample(engine, sample_csv)
            import_register(engine, extra, mode=ImportMode.APPEND)
            fingerprints[backend] = rehearse(engine, ZHENHAI, CUTOFF).fingerprint
            engine.dispose()
    assert len(set(fingerprints.values())) == 1, fingerprints


def test_sqlite_fingerprint_in_one_printf_is_the_generic_text(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite builds each row's text with one printf: the same text as the generic chain of casts,
    whatever the values (NULLs, a % in a name, numbers)."""
    from hukou_convert import fingerprint
    from hukou_convert.db import make_engine, parse_url
    from hukou_convert.register import BUILTIN_REGISTER

    engine = make_engine(parse_url(sqlite_url))
    rows = [
        person(ident("330211", "19800101", 11), "1", household="H%s1", name="百分%s号"),
        {**person(ident("330211", "19800202", 13), "2", household="H2"), "出生日期": ""},
    ]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    with engine.connect() as conn:
        one_call = fingerprint.register_fingerprint(conn, BUILTIN_REGISTER)
        monkeypatch.setattr(fingerprint, "_SQLITE_PRINTF_ARGS", 0)
        generic = fingerprint.register_fingerprint(conn, BUILTIN_REGISTER)
    assert one_call == generic
    engine.dispose()


def test_tables_of_an_earlier_version_are_named_not_used(engine: Engine, sample_csv: Path) -> None:
    from sqlalchemy import text

    from hukou_convert.errors import RegisterStateError

    import_register(engine, sample_csv)
    schema.ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE hukou_type_history DROP COLUMN record_key"))
    register = select(schema.register).order_by(schema.register.c.record_id)
    with engine.connect() as conn:
        before = conn.execute(register).all()
    with pytest.raises(RegisterStateError, match="hukou_type_history: record_key") as err:
        run_cutover(engine, ZHENHAI, CUTOFF)
    assert err.value.exit_code == 5
    with engine.connect() as conn:
        assert conn.execute(register).all() == before  # nothing converted


class _Interrupted(Exception):
    pass


def _history_indexes(engine: Engine) -> set[str]:
    """The history's indexes, and on PostgreSQL its primary key (deferred there too)."""
    from sqlalchemy import inspect

    inspector = inspect(engine)
    names = {str(ix["name"]) for ix in inspector.get_indexes(schema.history.name)}
    key = inspector.get_pk_constraint(schema.history.name)
    if engine.dialect.name == "postgresql" and key["constrained_columns"]:
        names.add(str(key["name"]))
    return names


def _all_history_indexes(engine: Engine) -> set[str]:
    names = {str(ix.name) for ix in schema.HISTORY_INDEXES}
    return names | ({"hukou_type_history_pkey"} if engine.dialect.name == "postgresql" else set())


def _watching(engine: Engine, seen: dict[str, set[str]], interrupt_after: int | None = None) -> Any:
    """A progress callback noting the history's indexes at each step of each phase, and
    interrupting the conversion after ``interrupt_after`` steps (as a kill would) once batches are
    committed: the run's first commit waits for the census read beside it, so until then each
    step waits a moment for it."""
    import time
    from contextlib import contextmanager

    def committed() -> int:
        with engine.connect() as conn:
            return len(conn.execute(select(schema.run_batches.c.batch_no)).all())

    @contextmanager
    def progress(phase: str, _total: int | None, _unit: str) -> Any:
        steps = 0

        def advance(_n: int) -> None:
            nonlocal steps
            steps += 1
            seen[phase] = _history_indexes(engine)
            if interrupt_after is not None and phase == "转换 cutover" and steps > interrupt_after:
                if committed():
                    raise _Interrupted
                time.sleep(0.05)  # the census: the next batch's commit comes with it

        yield advance

    return progress


def test_history_indexes_are_built_after_the_batches_of_a_first_cutover(
    engine: Engine, sample_csv: Path
) -> None:
    """Into an empty history the batches run without its indexes, which are built once after the
    last batch, also by a resume; a later cutover (history not empty) keeps them throughout."""
    from hukou_convert.rollback import rollback_run

    _sample(engine, sample_csv)
    expected = _all_history_indexes(engine)
    assert _history_indexes(engine) == expected
    seen: dict[str, set[str]] = {}
    interrupted = _watching(engine, seen, interrupt_after=2)
    with pytest.raises(_Interrupted):
        run_cutover(engine, ZHENHAI, CUTOFF, batch_size=10, progress=interrupted)
    assert seen["转换 cutover"] == set() and _history_indexes(engine) == set()
    resumed = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=40, progress=_watching(engine, seen))
    assert resumed.outcome == "resumed"
    assert _history_indexes(engine) == expected
    assert verify_run(engine, resumed.run_id).ok

    rollback_run(engine, str(resumed.run_id))
    seen.clear()
    again = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=40, progress=_watching(engine, seen))
    assert again.outcome == "completed" and again.run_id != resumed.run_id
    assert seen["转换 cutover"] == expected  # the history held rows: its indexes stayed
    assert _history_indexes(engine) == expected


def test_a_first_cutover_rolled_back_unfinished_leaves_the_history_indexed(
    engine: Engine, sample_csv: Path
) -> None:
    from hukou_convert.rollback import rollback_run

    _sample(engine, sample_csv)
    interrupted = _watching(engine, {}, interrupt_after=2)
    with pytest.raises(_Interrupted):
        run_cutover(engine, ZHENHAI, CUTOFF, batch_size=10, progress=interrupted)
    assert _history_indexes(engine) == set()
    with engine.connect() as conn:
        run_id = conn.execute(select(schema.runs.c.run_id)).scalar_one()
    rollback_run(engine, str(run_id))
    assert _history_indexes(engine) == _all_history_indexes(engine)


def test_a_session_holding_the_history_keeps_its_indexes_and_the_cutover_goes_on(
    db_url: str, sample_csv: Path
) -> None:
    """A look-up left open in a transaction on the history: dropping its indexes would wait for
    it. The cutover waits a few seconds at most, keeps them, and converts. (SQLite: an open reader
    blocks every writer's commit, cutover or not, so only the servers.)"""
    from hukou_convert.db import make_engine, parse_url

    engine = make_engine(parse_url(db_url))
    if engine.dialect.name == "sqlite":
        pytest.skip("on SQLite an open reader blocks every commit, not only this DDL")
    _sample(engine, sample_csv)
    schema.ensure_schema(engine)
    with engine.connect() as reader:
        reader.execute(select(schema.history.c.history_id).limit(1)).all()  # holds the table
        result = run_cutover(engine, ZHENHAI, CUTOFF)
        reader.rollback()
    assert result.outcome == "completed" and verify_run(engine, result.run_id).ok
    assert _history_indexes(engine) == _all_history_indexes(engine)
    engine.dispose()


def test_postgresql_statistics_are_refreshed_after_import_and_cutover(
    db_url: str, sample_csv: Path
) -> None:
    """Planner statistics right after the bulk changes (autovacuum would come later): the steps
    that follow plan with them."""
    from sqlalchemy import text

    from hukou_convert.db import make_engine, parse_url

    engine = make_engine(parse_url(db_url))
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's ANALYZE; the others keep their own statistics")

    def analyzed(table: str) -> bool:
        with engine.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables"
                        " WHERE relname = :t"
                    ),
                    {"t": table},
                ).scalar()
            )

    _sample(engine, sample_csv)
    assert analyzed("hukou_register")
    assert not analyzed("hukou_type_history")
    run_cutover(engine, ZHENHAI, CUTOFF)
    assert analyzed("hukou_type_history")
    engine.dispose()
