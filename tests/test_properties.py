"""Properties of the cutover over random registers (Hypothesis), checked against an oracle written
here in plain Python from the code table, not from the tool's SQL:

- the rehearsal's census and counts are exactly the real run's result;
- running the cutover twice equals running it once (the second run writes nothing);
- before = converted + already resident + not in the permanent register + inactive + out of scope,
  and per original nature: history rows = in-scope active records of that nature;
- every converted record is 居民户口 with its 户别 kept, every other record untouched;
- a rollback after the cutover gives the original register back, column for column;
- an unmapped code in scope: the real run refuses and writes nothing.

Many examples on SQLite (a fresh file per example), a few on PostgreSQL and MariaDB (the tables are
dropped and created again between examples).
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, select

from hukou_convert import schema
from hukou_convert.codes import CATEGORY_LABELS, CATEGORY_OF_LABEL, RESIDENT_TYPE, Action
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.db import make_engine, parse_url
from hukou_convert.errors import UnmappedCodesError
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.rollback import rollback_run
from hukou_convert.verify import verify_run

from .helpers import ident, table_dump

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)
CODES = ZHENHAI.codes
R, H = schema.register, schema.history

RAW_CODES = sorted(e.raw for e in CODES.entries())
IN_SCOPE = ["330211001001", "330211002003", "330211100204", "330211"]
OUT_OF_SCOPE = ["330212001001", "330203001001", "33021", "3302110", "", None]
# "3302110" starts with 330211 too: in scope by prefix (a malformed code is the checks' business)

Person = dict[str, Any]


@st.composite
def persons(draw: st.DrawFn, allow_unmapped: bool = False) -> Person:
    codes = [*RAW_CODES, "99", None] if allow_unmapped else RAW_CODES
    address = draw(st.sampled_from(["330211", "330203", "110101"]))
    year = draw(st.integers(1930, 2015))
    return {
        "id_number": ident(address, f"{year}0101", draw(st.integers(1, 999))),
        "name": draw(st.sampled_from(["张伟", "王芳", "𠀀明", "李娜"])),
        "household_id": f"H{draw(st.integers(1, 20))}",
        "hukou_type": draw(st.sampled_from(codes)),
        "household_category": draw(st.sampled_from(["家庭户", "集体户", "社区集体户", None])),
        "division_code": draw(st.sampled_from(IN_SCOPE + OUT_OF_SCOPE)),
        "status": draw(st.sampled_from(["正常", "正常", "正常", "死亡", "迁出", None])),
    }


def registers(allow_unmapped: bool = False) -> st.SearchStrategy[list[Person]]:
    return st.lists(persons(allow_unmapped), min_size=0, max_size=60)


# ---------------------------------------------------------------- the oracle


def classify(p: Person) -> str:
    division = p["division_code"]
    if division is None or not division.startswith("330211"):
        return "out_of_scope"
    if p["status"] not in ZHENHAI.active_statuses:
        return "inactive"
    entry = CODES.get(p["hukou_type"])
    if entry is None:
        return "unmapped"
    return {
        Action.CONVERT: "convert",
        Action.RESIDENT: "resident",
        Action.NOT_PERMANENT: "not_permanent",
    }[entry.action]


def after_cutover(p: Person) -> tuple[str | None, str | None]:
    """(户口性质, 户别) the record must hold after the cutover."""
    if classify(p) != "convert":
        return p["hukou_type"], p["household_category"]
    entry = CODES.get(p["hukou_type"])
    assert entry is not None
    label = CATEGORY_LABELS[entry.category] if entry.category else p["household_category"]
    return RESIDENT_TYPE, label


def history_category(p: Person) -> str | None:
    entry = CODES.get(p["hukou_type"])
    assert entry is not None
    if entry.category is not None:
        return entry.category.value
    category = CATEGORY_OF_LABEL.get(p["household_category"] or "")
    return category.value if category else None


# ---------------------------------------------------------------- databases


def load(engine: Engine, register: list[Person]) -> None:
    schema.ensure_schema(engine)
    if register:
        with engine.begin() as conn:
            conn.execute(insert(R), [p | {"source_line": i + 2} for i, p in enumerate(register)])


def _register(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(R).order_by(R.c.record_id))]


def check_cutover_properties(engine: Engine, register: list[Person]) -> None:
    load(engine, register)
    original = _register(engine)
    kinds = Counter(classify(p) for p in register)

    rehearsal = rehearse(engine, ZHENHAI, CUTOFF)
    census = rehearsal.census
    assert census.total == len(register)
    assert census.out_of_scope == kinds["out_of_scope"]
    assert census.inactive == kinds["inactive"]
    assert rehearsal.converted == kinds["convert"]
    assert census.already_resident == kinds["resident"]
    assert census.not_permanent == kinds["not_permanent"]
    assert sum(v.count for v in census.unmapped()) == kinds["unmapped"]
    assert _register(engine) == original  # the rehearsal wrote nothing

    if kinds["unmapped"]:
        before = table_dump(engine)
        with pytest.raises(UnmappedCodesError):
            run_cutover(engine, ZHENHAI, CUTOFF, batch_size=7)
        assert table_dump(engine) == before  # refused before writing anything
        return

    run = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=7)
    # rehearsal census = cutover result
    assert run.converted == rehearsal.converted
    assert run.converted_by == rehearsal.converted_by
    assert run.census.lines == census.lines
    # before = converted + already resident + not in register + inactive + out of scope
    assert len(register) == (
        run.converted
        + census.already_resident
        + census.not_permanent
        + census.inactive
        + census.out_of_scope
    )
    # per original nature (and 户别): history rows = in-scope active records of that nature
    expected_by: Counter[tuple[str, str | None]] = Counter()
    for p in register:
        if classify(p) == "convert":
            entry = CODES.get(p["hukou_type"])
            assert entry is not None and entry.nature is not None
            expected_by[(entry.nature.value, history_category(p))] += 1
    with engine.connect() as conn:
        history = conn.execute(
            select(H.c.record_id, H.c.original_code, H.c.original_nature, H.c.household_category)
        ).all()
        now = conn.execute(
            select(R.c.record_id, R.c.hukou_type, R.c.household_category).order_by(R.c.record_id)
        ).all()
    assert Counter((h.original_nature, h.household_category) for h in history) == expected_by
    # record by record: converted ones are 居民户口 with 户别 kept, all others untouched
    assert [(r.hukou_type, r.household_category) for r in now] == [
        after_cutover(p) for p in register
    ]
    keys = [r.record_id for r in now]
    converted_keys = sorted(
        k for k, p in zip(keys, register, strict=True) if classify(p) == "convert"
    )
    assert sorted(h.record_id for h in history) == converted_keys
    assert verify_run(engine, run.run_id).ok

    # running twice = running once
    once = table_dump(engine)
    again = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=3)
    assert again.outcome == "already-complete" and again.run_id == run.run_id
    assert table_dump(engine) == once

    # rollback after cutover gives the original register back
    rollback_run(engine, str(run.run_id), batch_size=5)
    assert _register(engine) == original


SQLITE_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SQLITE_SETTINGS
@given(register=registers())
def test_cutover_properties_on_sqlite(tmp_path: Path, register: list[Person]) -> None:
    engine = make_engine(parse_url(f"sqlite:///{tmp_path / f'{uuid.uuid4().hex}.db'}"))
    try:
        check_cutover_properties(engine, register)
    finally:
        engine.dispose()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(register=registers(allow_unmapped=True))
def test_unmapped_codes_refuse_on_sqlite(tmp_path: Path, register: list[Person]) -> None:
    engine = make_engine(parse_url(f"sqlite:///{tmp_path / f'{uuid.uuid4().hex}.db'}"))
    try:
        check_cutover_properties(engine, register)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_cutover_properties_on_servers(backend: str, request: pytest.FixtureRequest) -> None:
    """The same properties on PostgreSQL and MariaDB, fewer examples (DDL there is slow)."""
    from .conftest import _fresh_database

    tmp_path: Path = request.getfixturevalue("tmp_path")
    databases = _fresh_database(backend, tmp_path)
    url = next(databases)
    engine = make_engine(parse_url(url))

    @settings(
        max_examples=6,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(register=registers(allow_unmapped=True))
    def check(register: list[Person]) -> None:
        schema.metadata.drop_all(engine)
        check_cutover_properties(engine, register)

    try:
        check()
    finally:
        engine.dispose()
        next(databases, None)
