"""Rollback on three databases: the register back as it was, the history kept, resumable after kill -9."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from hukou_convert import schema
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.db import make_engine, parse_url
from hukou_convert.errors import ChangedSinceCutoverError, LockHeldError, RunMismatchError
from hukou_convert.history import lookup
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.rollback import rollback_run
from hukou_convert.sample import SampleOptions, write_sample
from hukou_convert.verify import verify_run

from .helpers import ident
from .test_resume import _cli, _wait_for_batches

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)
R, H = schema.register, schema.history


def _register(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(R).order_by(R.c.record_id))]


def test_rollback_restores_the_register_and_keeps_the_history(
    engine: Engine, sample_csv: Path
) -> None:
    import_register(engine, sample_csv)
    original = _register(engine)
    run = run_cutover(engine, ZHENHAI, CUTOFF, batch_size=40)
    assert _register(engine) != original
    result = rollback_run(engine, str(run.run_id), batch_size=30)
    assert result.outcome == "reverted"
    assert result.restored == run.converted and result.skipped_changed == 0
    assert _register(engine) == original  # every column, every record, as before the cutover
    with engine.connect() as conn:
        rows = conn.execute(select(H.c.reverted_at)).scalars().all()
        status = conn.execute(select(schema.runs.c.status)).scalar_one()
    assert len(rows) == run.converted and all(r is not None for r in rows)
    assert status == "reverted"
    assert verify_run(engine, run.run_id).ok
    collective = ident("330211", "20000101", 22)
    [found] = lookup(engine, [collective])
    assert found.entries[0].reverted_at is not None
    # running it again does nothing
    assert rollback_run(engine, str(run.run_id)).outcome == "already-reverted"


def test_cutover_rollback_cutover_keeps_every_run(engine: Engine, sample_csv: Path) -> None:
    import_register(engine, sample_csv)
    first = run_cutover(engine, ZHENHAI, CUTOFF)
    rollback_run(engine, str(first.run_id))
    second = run_cutover(engine, ZHENHAI, CUTOFF)
    assert second.run_id != first.run_id and second.outcome == "completed"
    rollback_run(engine, str(second.run_id))
    third = run_cutover(engine, ZHENHAI, CUTOFF)
    assert first.converted == second.converted == third.converted
    with engine.connect() as conn:
        per_run = dict(
            conn.execute(
                select(H.c.run_id, func.count())
                .where(H.c.reverted_at.is_(None))
                .group_by(H.c.run_id)
            ).all()
        )
        total = conn.execute(select(func.count()).select_from(H)).scalar_one()
    assert total == 3 * first.converted  # nothing in the history is ever deleted
    assert per_run == {third.run_id: third.converted}
    assert verify_run(engine, third.run_id).ok
    assert verify_run(engine, first.run_id).ok
    assert rehearse(engine, ZHENHAI, CUTOFF).converted == 0


def test_changed_records_refuse_the_rollback_unless_skipped(
    engine: Engine, sample_csv: Path
) -> None:
    import_register(engine, sample_csv)
    run = run_cutover(engine, ZHENHAI, CUTOFF)
    with engine.begin() as conn:
        target = conn.execute(select(H.c.record_id).order_by(H.c.record_id).limit(1)).scalar_one()
        conn.execute(update(R).where(R.c.record_id == target).values(division_code="330211002001"))
    before = _register(engine)
    with pytest.raises(ChangedSinceCutoverError) as err:
        rollback_run(engine, str(run.run_id))
    assert str(target) in err.value.message()
    assert _register(engine) == before  # nothing was restored
    result = rollback_run(engine, str(run.run_id), skip_changed=True)
    assert (result.restored, result.skipped_changed) == (run.converted - 1, 1)
    with engine.connect() as conn:
        kept = conn.execute(select(R.c.hukou_type).where(R.c.record_id == target)).scalar_one()
        live = conn.execute(select(H.c.record_id).where(H.c.reverted_at.is_(None))).scalars().all()
    assert kept == "居民户口" and live == [target]
    assert verify_run(engine, run.run_id).ok


@pytest.mark.slow
def test_killed_rollback_resumes_and_a_cutover_waits_for_it(db_url: str, tmp_path: Path) -> None:
    register = tmp_path / "register.csv"
    write_sample(register, SampleOptions(("330211",), 6_000, seed=11))
    engine = make_engine(parse_url(db_url))
    import_register(engine, register)
    original = _register(engine)
    run = run_cutover(engine, ZHENHAI, CUTOFF)

    def rollback_batches() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(schema.rollback_batches)).scalar_one()
            )

    proc = _cli(db_url, "rollback", "--run", str(run.run_id), "--yes", "-q", "--batch-size", "25")
    _wait_for_batches_of(rollback_batches, proc, 5)
    proc.kill()
    proc.wait()
    with pytest.raises(RunMismatchError, match="rollback of run"):
        _once_the_lock_is_released(lambda: run_cutover(engine, ZHENHAI, CUTOFF))
    proc = _cli(db_url, "rollback", "--run", str(run.run_id), "--yes", "-q")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "rollback resumed and finished" in out
    assert _register(engine) == original
    assert verify_run(engine, run.run_id).ok
    engine.dispose()


def _wait_for_batches_of(count: Any, proc: Any, at_least: int) -> None:
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if count() >= at_least:
                return
        except Exception:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"rollback ended before batch {at_least}: {proc.communicate()[1]}")
        time.sleep(0.005)
    raise AssertionError("no rollback progress within 120 s")


def _once_the_lock_is_released(call: Any) -> Any:
    """The server frees a killed session's lock when it notices the closed socket: a moment later."""
    import time

    deadline = time.monotonic() + 10
    while True:
        try:
            return call()
        except LockHeldError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_ = _wait_for_batches  # the cutover variant, shared with test_resume
