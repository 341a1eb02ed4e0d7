"""Real processes, killed with SIGKILL mid-run: the resumed result equals an uninterrupted one.

Also the live-run lock: a second cutover started while one runs exits 7 naming the holder, and the
lock is free again once the holder is killed, without any manual step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from hukou_convert import schema
from hukou_convert.db import make_engine, parse_url
from hukou_convert.ingest import import_register
from hukou_convert.sample import SampleOptions, write_sample
from hukou_convert.verify import verify_run

from .helpers import conversion_state

pytestmark = pytest.mark.slow

PERSONS = 12_000
BATCH = 60  # 200 batches: plenty of points to be killed at


def _cli(url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "HUKOU_DB"}
    return subprocess.Popen(
        [sys.executable, "-m", "hukou_convert", *args, "--db", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _batches(engine: Engine) -> int:
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(schema.run_batches)).scalar_one()
            )
    except Exception:  # tables not created yet, or SQLite busy for a moment
        return 0


def _wait_for_batches(engine: Engine, proc: subprocess.Popen[str], at_least: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen = _batches(engine)
        if seen >= at_least:
            return seen
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(
                f"process ended (rc {proc.returncode}) before batch {at_least}: {err}"
            )
        time.sleep(0.005)
    raise AssertionError("no progress within 120 s")


@pytest.fixture(scope="module")
def register_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("register") / "register.csv"
    write_sample(path, SampleOptions(("330211",), PERSONS, seed=7))
    return path


def test_killed_cutover_resumes_to_the_uninterrupted_result(
    two_db_urls: tuple[str, str], register_csv: Path
) -> None:
    killed_url, straight_url = two_db_urls
    killed, straight = make_engine(parse_url(killed_url)), make_engine(parse_url(straight_url))
    for engine in (killed, straight):
        import_register(engine, register_csv)
    cutover = ("cutover", "-p", "zhenhai", "--yes", "-q", "--batch-size", str(BATCH))

    proc = _cli(straight_url, *cutover)
    assert proc.wait(timeout=300) == 0, proc.communicate()[1]
    expected = conversion_state(straight)

    kill_points = [3, 40, 120]
    for point in kill_points:
        proc = _cli(killed_url, *cutover)
        _wait_for_batches(killed, proc, point)
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait()
        with killed.connect() as conn:
            status = conn.execute(select(schema.runs.c.status)).scalar_one()
        assert status == "running"  # really interrupted mid-run
    proc = _cli(killed_url, *cutover)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "resumed and completed" in out

    assert conversion_state(killed) == expected
    with killed.connect() as conn:
        runs = conn.execute(select(func.count()).select_from(schema.runs)).scalar_one()
        batch_numbers = (
            conn.execute(
                select(schema.run_batches.c.batch_no).order_by(schema.run_batches.c.batch_no)
            )
            .scalars()
            .all()
        )
    assert runs == 1  # the same run was continued, never a second one
    assert batch_numbers == list(range(1, len(batch_numbers) + 1))
    assert verify_run(killed).ok
    for engine in (killed, straight):
        engine.dispose()


def test_second_live_run_is_refused_naming_the_holder(db_url: str, register_csv: Path) -> None:
    engine = make_engine(parse_url(db_url))
    import_register(engine, register_csv)
    cutover = ("cutover", "-p", "zhenhai", "--yes", "-q", "--batch-size", "20")
    holder = _cli(db_url, *cutover)
    try:
        _wait_for_batches(engine, holder, 2)
        with engine.connect() as conn:
            run_id = conn.execute(select(schema.runs.c.run_id)).scalar_one()
        second = _cli(db_url, *cutover)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 7, err
        assert f"run {run_id}" in err and f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    # the holder died: the lock is free with no manual step, and the run continues
    resumed = _cli(db_url, *cutover)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert run_id in out
    engine.dispose()
