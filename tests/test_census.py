"""The census on SQLite, grouped a range of keys at a time: the same lines as one grouped scan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, literal, select, update

from hukou_convert import census, schema
from hukou_convert.census import key_ranges, take_census
from hukou_convert.db import make_engine, parse_url
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES
from hukou_convert.register import BUILTIN_REGISTER

ZHENHAI = BUILTIN_PROFILES["zhenhai"]


def _sample_keyed(url: str, sample_csv: Path, which: Any, key: Any) -> Engine:
    """The sample register (keys 1 … 328) imported, the keys of ``which`` records set to ``key``."""
    engine = make_engine(parse_url(url))
    import_register(engine, sample_csv)
    with engine.begin() as conn:
        conn.execute(update(schema.register).where(which).values(record_id=key))
    return engine


def test_census_by_ranges_of_keys_equals_one_grouped_scan(
    sqlite_url: str, sample_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # negative keys, and a gap: ranges with no record in them count nothing
    R = schema.register
    engine = _sample_keyed(sqlite_url, sample_csv, R.c.record_id > 300, R.c.record_id - 1000)
    with engine.connect() as conn:
        whole = take_census(conn, BUILTIN_REGISTER, ZHENHAI)
        assert key_ranges(conn, BUILTIN_REGISTER.key_column) == [None]  # -699 … 300: one range
        monkeypatch.setattr(census, "GROUP_RANGE", 7)
        ranges = key_ranges(conn, BUILTIN_REGISTER.key_column)
        assert len(ranges) == (300 - -699) // 7 + 1
        ranged = take_census(conn, BUILTIN_REGISTER, ZHENHAI)
    with engine.begin() as conn:
        # keys beyond the bounds the ranges were cut from (a record added since) fall in one too
        for key in (-(10**6), 10**6):
            conn.execute(
                insert(R).from_select(
                    [c.name for c in R.columns],
                    select(literal(key), *[c for c in R.columns if c.name != "record_id"]).where(
                        R.c.record_id == 1
                    ),
                )
            )
        covered = [
            conn.execute(select(func.count()).select_from(R).where(within)).scalar_one()
            for within in ranges
            if within is not None
        ]
    assert len(covered) == len(ranges) and sum(covered) == 330
    assert max(covered[1:-1]) <= 7 and covered[0] <= 8 and covered[-1] <= 8
    engine.dispose()
    assert whole.total == 328 and whole.to_convert > 0
    assert ranged.lines == whole.lines


def test_keys_spread_too_thin_are_grouped_in_one_scan(
    sqlite_url: str, sample_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    R = schema.register
    engine = _sample_keyed(sqlite_url, sample_csv, R.c.record_id == 328, 10**12)
    monkeypatch.setattr(census, "GROUP_RANGE", 7)
    with engine.connect() as conn:
        assert key_ranges(conn, BUILTIN_REGISTER.key_column) == [None]
        assert take_census(conn, BUILTIN_REGISTER, ZHENHAI).total == 328
    engine.dispose()
