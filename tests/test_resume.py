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
from hukou_convert.errors import LockHeldError
from hukou_convert.ingest import import_register
from hukou_convert.runlock import live_run_lock
from hukou_convert.runs import describe_live_run
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
        start_new_session=True,  # its worker processes, if any, in its process group
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


def test_two_cutovers_started_at_once_one_proceeds_the_other_names_it(
    db_url: str, register_csv: Path
) -> None:
    engine = make_engine(parse_url(db_url))
    import_register(engine, register_csv)
    cutover = ("cutover", "-p", "zhenhai", "--yes", "-q", "--batch-size", "20")
    first, second = _cli(db_url, *cutover), _cli(db_url, *cutover)  # the same moment
    outputs = {proc.pid: proc.communicate(timeout=300) for proc in (first, second)}
    codes = sorted((proc.returncode, proc.pid) for proc in (first, second))
    (won, winner), (lost, loser) = codes
    assert (won, lost) == (0, 7), outputs
    refusal = outputs[loser][1]
    with engine.connect() as conn:
        runs = conn.execute(select(schema.runs.c.run_id, schema.runs.c.pid)).all()
    assert len(runs) == 1 and runs[0].pid == winner  # exactly one run, the winner's
    if engine.dialect.name == "mysql":
        # the holder's server connection when its run is not recorded yet, else its run
        assert f"pid {winner}" in refusal or "server connection" in refusal, refusal
    else:
        assert f"pid {winner}" in refusal, refusal
    engine.dispose()


_HOLD_THE_LOCK = """
import sys, time
from hukou_convert.db import make_engine, parse_url
from hukou_convert.runlock import live_run_lock
engine = make_engine(parse_url(sys.argv[1]))
with live_run_lock(engine, lambda note: "unused"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def test_a_holder_with_no_run_recorded_is_named_by_the_lock(db_url: str) -> None:
    """Before the holder records its run (taking its census), the refused process names it from
    the lock itself: its pid (lock file, PostgreSQL application_name) or its server connection."""
    engine = make_engine(parse_url(db_url))
    schema.ensure_schema(engine)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_LOCK, db_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(LockHeldError) as refused,
            live_run_lock(engine, lambda note: describe_live_run(engine, note, wait=0)),
        ):
            pass
    finally:
        holder.communicate(timeout=60)
    message = str(refused.value)
    assert "no run recorded" in message
    if engine.dialect.name == "mysql":
        assert "server connection" in message, message
    else:
        assert f"hukou-convert pid {holder.pid} on " in message, message
    # released when the holder ended: the lock is free again
    with live_run_lock(engine, lambda note: "unused"):
        pass
    engine.dispose()
