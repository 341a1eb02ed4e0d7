"""The census on SQLite, grouped a range of keys at a time: the same lines as one grouped scan."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from hukou_convert import census, schema
from hukou_convert.census import key_ranges, take_census
from hukou_convert.db import make_engine, parse_url
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES
from hukou_convert.register import BUILTIN_REGISTER

ZHENHAI = BUILTIN_PROFILES["zhenhai"]


def test_census_by_ranges_of_keys_equals_one_grouped_scan(
    sqlite_url: str, sample_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(parse_url(sqlite_url))
    import_register(engine, sample_csv)
    with engine.begin() as conn:
        # a gap in the keys: a range with no record in it counts nothing
        conn.execute(
            update(schema.register)
            .where(schema.register.c.record_id > 300)
            .values(record_id=schema.register.c.record_id + 1000)
        )
    with engine.connect() as conn:
        whole = take_census(conn, BUILTIN_REGISTER, ZHENHAI)
        assert key_ranges(conn, BUILTIN_REGISTER.key_column) == [None]  # 1,328 keys: one range
        monkeypatch.setattr(census, "GROUP_RANGE", 7)
        ranges = key_ranges(conn, BUILTIN_REGISTER.key_column)
        assert len(ranges) == (1328 - 1) // 7 + 1
        ranged = take_census(conn, BUILTIN_REGISTER, ZHENHAI)
    engine.dispose()
    assert whole.total == 328 and whole.to_convert > 0
    assert ranged.lines == whole.lines


def test_keys_spread_too_thin_are_grouped_in_one_scan(
    sqlite_url: str, sample_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(parse_url(sqlite_url))
    import_register(engine, sample_csv)
    with engine.begin() as conn:
        conn.execute(
            update(schema.register)
            .where(schema.register.c.record_id == 328)
            .values(record_id=10**12)
        )
    monkeypatch.setattr(census, "GROUP_RANGE", 7)
    with engine.connect() as conn:
        assert key_ranges(conn, BUILTIN_REGISTER.key_column) == [None]
        assert take_census(conn, BUILTIN_REGISTER, ZHENHAI).total == 328
    engine.dispose()
