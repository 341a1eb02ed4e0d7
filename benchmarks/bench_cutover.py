"""Benchmark: import and cutover beside their floors, in the same run (FLOORS.md's method).

Run on demand (not a test):

    python benchmarks/bench_cutover.py --persons 1000000 [--db sqlite|postgresql] [--work DIR] [--night]

For the given size: a synthetic register CSV (zhenhai, ~85 % legacy types), then, each step in a
fresh process so that its peak RSS is its own:

- import: ``hukou-convert import`` against the floor, csv.reader + one executemany transaction
  (SQLite) / COPY (PostgreSQL) of the same rows into a table with the same key, its two secondary
  indexes built once the rows are in (the best means: a sort instead of an insert per row);
- rehearsal: ``rehearse`` (census, fingerprint, checks; no workbook: bench_workbook.py measures
  the workbooks against raw openpyxl);
- cutover: ``hukou-convert cutover --yes`` against the floor, one ``INSERT INTO history SELECT …``
  and one ``UPDATE`` with the same CASE expressions on a copy of the register, in one transaction.

With ``--repeat N`` the import and its floor run N times, alternating, each into a fresh database,
and so do the cutover and its floor, on copies of the imported register: the medians are shown.
Each of them starts with the database at rest (``AT_REST``), and on PostgreSQL the register kept
for the later steps is vacuumed, unmeasured, once imported (``SETTLE``).

The cutover's phases come from its progress callback (census, fingerprint, conversion, checks after
the commit), so the closed window (start to the conversion's commit) is shown beside the floor;
- verify: ``verify_run`` of the run just made.

With ``--expect`` the cutover is held to the rehearsal's plan (``cutover --expect``, as the
README's night runs it): the rehearsal writes its plan, and each cutover runs on a copy of the
rehearsed register (on SQLite with its modification time kept: by its state the file the rehearsal
read, which the run then does not read again). A PostgreSQL copy is another database, which a plan
of the original does not vouch for: each copy is rehearsed itself first, unmeasured, and the run on
it, finding the very rows that rehearsal read, does not read them again. The table says how many
cutovers found the register so.

With ``--night`` the whole night instead: the rehearsal writes its workbook (as ``cutover --dry-run``
does), and after verify the run's workbooks are written by township on ``--processes`` processes;
the last line adds the steps up (the issue's target: 10M persons on SQLite in 15 minutes).

Every step shows its time per person (the linearity target compares it at 1M and 10M) and its
memory: what its processes held at once (their PSS added up, sampled every 0.1 s), and beside it
an upper bound, the peaks of its process and of the processes it starts added up.
Prints one table; figures vary from machine to machine, ratios much less.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sqlalchemy import create_engine, text  # noqa: E402

from hukou_convert.sample import PERSON_HEADER, SampleOptions, generate_persons  # noqa: E402

PG_ADMIN = os.environ.get(
    "HUKOU_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def child(code: str, *args: str) -> dict[str, Any]:
    """Run a Python snippet in a fresh process; it prints a JSON dict; add its own peak RSS: its
    VmHWM, which exec resets (its ru_maxrss would keep this process's size at the fork, and the
    children's ru_maxrss here would be the largest of all children so far); and the largest
    peaks of the processes it starts (an import's parsing processes and their forkserver, a
    cutover's workers, the area workbooks' writers), sampled from its process group every 0.1 s
    and added up: ``helpers_mb`` (an upper bound: their peaks need not coincide, and pages shared
    between processes, such as the interpreter's, count in each). ``together_mb``: the memory
    the step's processes held at once, their proportional set sizes (PSS: a page shared by n
    processes counts 1/n in each) added up at each sample, the largest sum (never less than the
    step's own peak)."""
    peak = (
        "\nimport re as _re\nprint(_re.search(r'VmHWM:\\s*(\\d+)',"
        " open('/proc/self/status').read()).group(1))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code + peak, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its helpers in its process group
    )
    helpers: dict[int, int] = {}
    together = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peaks, shares = _group_memory(proc.pid)
            for pid, kb in peaks.items():
                helpers[pid] = max(helpers.get(pid, 0), kb)
            together[0] = max(together[0], shares)

    sampling = threading.Thread(target=sample, daemon=True)
    sampling.start()
    out, err = proc.communicate()
    done.set()
    sampling.join()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, "bench step", out, err)
    lines = out.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-2])
    result["peak_mb"] = int(lines[-1]) / 1024
    result["helpers_mb"] = sum(helpers.values()) / 1024
    result["together_mb"] = max(together[0] / 1024, result["peak_mb"])
    return result


def _group_memory(group: int) -> tuple[dict[int, int], int]:
    """VmHWM (kB) of each process of a process group but its leader; and the PSS (kB) of all of
    them, the leader's included, added up."""
    peaks = {}
    shares = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                if int(fh.read().rsplit(")", 1)[1].split()[2]) != group:
                    continue
            with open(f"/proc/{entry}/smaps_rollup", encoding="ascii") as fh:
                pss = re.search(r"^Pss:\s*(\d+)", fh.read(), re.MULTILINE)
            with open(f"/proc/{entry}/status", encoding="ascii") as fh:
                found = re.search(r"VmHWM:\s*(\d+)", fh.read())
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile (any other error: the figure would be wrong, so raised)
        if pss:
            shares += int(pss.group(1))
        if found and int(entry) != group:
            peaks[int(entry)] = int(found.group(1))
    return peaks, shares


IMPORT = r"""
import json, sys, time
from pathlib import Path
from hukou_convert.db import make_engine, parse_url
from hukou_convert.ingest import import_register
url, path = sys.argv[1], Path(sys.argv[2])
engine = make_engine(parse_url(url))
at_rest(engine)
t = time.perf_counter()
r = import_register(engine, path)
print(json.dumps({"seconds": time.perf_counter() - t, "loaded": r.loaded}))
"""

IMPORT_FLOOR = r"""
import csv, json, sys, time
from sqlalchemy import create_engine, text
url, path, when = sys.argv[1], sys.argv[2], sys.argv[3]
engine = create_engine(url)
pg = engine.dialect.name == "postgresql"
key = "BIGSERIAL PRIMARY KEY" if pg else "INTEGER PRIMARY KEY"
indexes = ["CREATE INDEX ix_floor_id ON floor_register (id_number)",
    "CREATE INDEX ix_floor_hh ON floor_register (household_id)"]
# "shaped": into a table of the register's own shape (typed date and instant, the import and the
# line of each row, and on PostgreSQL fillfactor 50, which the cutover's floor assumes, and the
# codes in the "C" collation)
shaped = when == "shaped"
birth, instant = ("DATE", "TIMESTAMP WITH TIME ZONE" if pg else "DATETIME") if shaped else (
    "VARCHAR(10)", "VARCHAR(30)")
extra = ", import_id INTEGER, source_line INTEGER" if shaped else ""
storage = " WITH (fillfactor = 50)" if shaped and pg else ""
code = ' COLLATE "C"' if shaped and pg else ""
at_rest(engine)
t = time.perf_counter()
with engine.begin() as conn:
    conn.execute(text(f"CREATE TABLE floor_register (record_id {key}, id_number VARCHAR(32){code},"
        f" name VARCHAR(100), sex VARCHAR(4), birth_date {birth}, household_id VARCHAR(40){code},"
        f" hukou_type VARCHAR(40), household_category VARCHAR(20), division_code VARCHAR(20){code},"
        f" status VARCHAR(20), updated_at {instant}, address VARCHAR(200), police_station VARCHAR(100),"
        f" relation VARCHAR(20){extra}){storage}"))
    if when == "before":
        for index in indexes:
            conn.execute(text(index))
        indexes = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh); next(reader)
        raw = conn.connection.driver_connection
        if pg and shaped:
            with raw.cursor().copy("COPY floor_register (id_number, name, sex, birth_date, household_id,"
                    " hukou_type, household_category, division_code, status, updated_at, address,"
                    " police_station, relation, import_id, source_line) FROM STDIN") as copy:
                for line, row in enumerate(reader, start=2):
                    copy.write_row(row + ["1", str(line)])
        elif pg:
            with raw.cursor().copy("COPY floor_register (id_number, name, sex, birth_date, household_id,"
                    " hukou_type, household_category, division_code, status, updated_at, address,"
                    " police_station, relation) FROM STDIN") as copy:
                for row in reader:
                    copy.write_row(row)
        else:
            cur = raw.cursor()
            columns = ("id_number, name, sex, birth_date, household_id, hukou_type, household_category,"
                " division_code, status, updated_at, address, police_station, relation")
            columns += ", import_id, source_line" if shaped else ""
            marks = ",".join("?" * (15 if shaped else 13))
            statement = f"INSERT INTO floor_register ({columns}) VALUES ({marks})"
            batch = []
            for line, row in enumerate(reader, start=2):
                batch.append(row + [1, line] if shaped else row)
                if len(batch) == 5000:
                    cur.executemany(statement, batch)
                    batch = []
            if batch:
                cur.executemany(statement, batch)
    # the best means: the secondary indexes built once the rows are in ("after"); "before":
    # maintained row by row, as the bench's floor had them until the tool built its own after
    for index in indexes:
        conn.execute(text(index))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

# A register loaded long before the night, as in real life, is at rest: PostgreSQL writes a whole
# page to its WAL on the first change after a checkpoint, which a table just copied does not pay;
# and the copy just made (a SQLite file copied, the floor's table created) is still being written
# to disk, which the kernel starts at once once it exceeds a tenth of the memory (about 250 MB
# of a 1M SQLite register, 2.5 GB of a 10M one): that writing competes with the step's own for
# the disk at 10M and not at 1M. The cutover and its floor both start with the register at rest.
# Each import and its floor start at rest too: the WAL the step before wrote (an import, its floor:
# 0.4 GB at 1M) brings on a checkpoint that falls in whichever step runs next, by turns the tool's
# or its floor's (1M on PostgreSQL, one run: imports 7.1, 6.1, 5.6 s against floors 4.7, 3.5,
# 3.5 s). And the register kept for the steps below is vacuumed before anything else runs, as
# autovacuum does to a table of new rows long before the night: left to autovacuum, that VACUUM
# reads the whole register while the next import or floor is measured.
AT_REST = r"""
import os
from sqlalchemy import text
def at_rest(engine, vacuum=False):
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if vacuum:
                conn.execute(text("VACUUM"))
            conn.execute(text("CHECKPOINT"))
    os.sync()
"""

SETTLE = r"""
import json, sys, time
from hukou_convert.db import make_engine, parse_url
t = time.perf_counter()
at_rest(make_engine(parse_url(sys.argv[1])), vacuum=True)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

CUTOVER = r"""
import json, sys, time
from contextlib import contextmanager
from pathlib import Path
from hukou_convert.cutover import run_cutover
from hukou_convert.db import make_engine, parse_url
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
url = sys.argv[1]
phases = {}
@contextmanager
def progress(phase, total, unit):
    start = time.perf_counter()
    yield lambda n: None
    phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - start
    phases.setdefault("_end_" + phase, time.perf_counter() - t0)
p = BUILTIN_PROFILES["zhenhai"]
engine = make_engine(parse_url(url))
at_rest(engine)
t0 = time.perf_counter()
workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
expect = Path(sys.argv[3]) if len(sys.argv) > 3 else None  # held to the rehearsal's plan
r = run_cutover(engine, p, resolve_cutoff(p, None), progress=progress, workers=workers,
    expect=expect)
c = r.plan_comparison  # held to the plan without reading the records again
held = c is not None and (c.unchanged_file or c.unchanged_rows)
print(json.dumps({"seconds": time.perf_counter() - t0, "converted": r.converted, "phases": phases,
    "not_read_again": held}))
"""

REHEARSE = r"""
import json, sys, time
from pathlib import Path
from hukou_convert.cutover import rehearse
from hukou_convert.db import make_engine, parse_url
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
url = sys.argv[1]
p = BUILTIN_PROFILES["zhenhai"]
t = time.perf_counter()
plan_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else None  # with its plan
r = rehearse(make_engine(parse_url(url)), p, resolve_cutoff(p, None), plan_dir=plan_dir)
print(json.dumps({"seconds": time.perf_counter() - t, "converted": r.converted}))
"""

REHEARSE_WITH_WORKBOOK = r"""
import json, sys, time
from pathlib import Path
from hukou_convert.db import make_engine, parse_url
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.runbook import cutover_and_report
url, out = sys.argv[1], Path(sys.argv[2])
p = BUILTIN_PROFILES["zhenhai"]
t = time.perf_counter()
r = cutover_and_report(make_engine(parse_url(url)), p, resolve_cutoff(p, None), rehearsal=True,
    out_dir=out)
print(json.dumps({"seconds": time.perf_counter() - t, "rows": r.workbook.detail_rows}))
"""

REPORT = r"""
import json, sys, time
from pathlib import Path
from hukou_convert.cutover import load_run_result
from hukou_convert.db import make_engine, parse_url
from hukou_convert.workbook import write_run_workbook
url, out, processes = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
engine = make_engine(parse_url(url))
t = time.perf_counter()
w = write_run_workbook(engine, load_run_result(engine, None), out, split_by="township",
    processes=processes)
print(json.dumps({"seconds": time.perf_counter() - t, "rows": w.detail_rows}))
"""

VERIFY = r"""
import json, sys, time
from hukou_convert.db import make_engine, parse_url
from hukou_convert.verify import verify_run
url = sys.argv[1]
t = time.perf_counter()
r = verify_run(make_engine(parse_url(url)))
print(json.dumps({"seconds": time.perf_counter() - t, "ok": r.ok}))
"""

# The floor: the same conversion done the best possible way, one INSERT INTO history SELECT and
# one UPDATE in one transaction, on a copy of the register (PostgreSQL: at fillfactor 50, FLOORS.md),
# into a history with no key and no index. "same-rows" writes the history rows the tool writes
# (its 15 columns) and the same UPDATE (the code, and 户别 from a combined code); "narrow" is the
# five-column history FLOORS.md's method names, printed beside it for reference.
CUTOVER_FLOOR = r"""
import json, sys, time
from sqlalchemy import create_engine, text
url, shape = sys.argv[1], sys.argv[2]
engine = create_engine(url)
codes = {"1": "NON_AGRICULTURAL", "2": "AGRICULTURAL", "3": "NON_AGRICULTURAL", "4": "AGRICULTURAL",
    "5": "SELF_SUPPLIED_GRAIN", "6": "LODGING", "8": "OTHER", "农业": "AGRICULTURAL",
    "非农业": "NON_AGRICULTURAL", "城镇户口": "NON_AGRICULTURAL", "蓝印户口": "BLUE_STAMP",
    "自理户口": "SELF_SUPPLIED_GRAIN", "地方城镇居民户口": "LOCAL_URBAN"}
case = "CASE hukou_type " + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in codes.items()) + " END"
inlist = ", ".join(f"'{k}'" for k in codes)
family = {"1": "FAMILY", "2": "FAMILY", "3": "COLLECTIVE", "4": "COLLECTIVE"}
labels = {"FAMILY": "家庭户", "COLLECTIVE": "集体户"}
from_code = "CASE hukou_type " + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in family.items()) + " END"
from_label = ("CASE household_category " + " ".join(f"WHEN '{v}' THEN '{k}'" for k, v in labels.items())
    + " WHEN '社区集体户' THEN 'COLLECTIVE' END")
label_of_code = ("CASE hukou_type " + " ".join(f"WHEN '{k}' THEN '{labels[v]}'" for k, v in family.items())
    + " END")
pg = engine.dialect.name == "postgresql"
instant = "TIMESTAMP WITH TIME ZONE" if pg else "DATETIME"
where = f"division_code LIKE '330211%' AND status = '正常' AND hukou_type IN ({inlist})"
with engine.begin() as conn:
    # the best means: on PostgreSQL the copy at fillfactor 50 too (FLOORS.md: 4-5x faster)
    ff = " WITH (fillfactor = 50)" if pg else ""
    conn.execute(text(f"CREATE TABLE floor_copy{ff} AS SELECT * FROM hukou_register"))
    if shape == "narrow":
        conn.execute(text("CREATE TABLE floor_history (id_number VARCHAR(32), original_code VARCHAR(40),"
            " original_nature VARCHAR(24), household_category VARCHAR(20), record_id BIGINT)"))
        insert = (f"INSERT INTO floor_history SELECT id_number, hukou_type, {case}, household_category,"
            f" record_id FROM floor_copy WHERE {where}")
        update = f"UPDATE floor_copy SET hukou_type = '居民户口' WHERE {where}"
    else:
        conn.execute(text("CREATE TABLE floor_history (id_number VARCHAR(32), original_code VARCHAR(40),"
            " original_nature VARCHAR(24), household_category VARCHAR(12),"
            " original_category_label VARCHAR(20), new_type VARCHAR(12),"
            f" effective_at {instant}, converted_at {instant}, run_id VARCHAR(40), record_id BIGINT,"
            " record_key VARCHAR(64), division_code VARCHAR(20), application_id VARCHAR(64),"
            f" reverted_at {instant})"))
        cutoff = "'2016-10-01 00:00:00+08:00'" if pg else "'2016-10-01 00:00:00.000000'"
        stamp = "'2026-11-30 08:00:00.123456+08:00'" if pg else "'2026-11-30 08:00:00.123456'"
        insert = ("INSERT INTO floor_history (id_number, original_code, original_nature,"
            " household_category, original_category_label, new_type, effective_at, converted_at,"
            " run_id, record_id, division_code)"
            f" SELECT id_number, hukou_type, {case}, coalesce({from_code}, {from_label}),"
            f" household_category, 'RESIDENT', {cutoff}, {stamp}, 'R20261130T080000-abcd',"
            f" record_id, division_code FROM floor_copy WHERE {where}")
        update = (f"UPDATE floor_copy SET household_category = coalesce({label_of_code},"
            f" household_category), hukou_type = '居民户口' WHERE {where}")
at_rest(engine)
t = time.perf_counter()
with engine.begin() as conn:
    conn.execute(text(insert))
    conn.execute(text(update))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def fresh_url(kind: str, work: Path, template: str | None = None) -> tuple[str, Any]:
    """A new database (a copy of ``template``'s, if given) and the function that drops it."""
    if kind == "sqlite":
        db = work / f"bench-{uuid.uuid4().hex[:8]}.db"
        if template is not None:
            # its modification time kept: byte for byte and by its state the file the rehearsal
            # read (--expect: the run knows it unchanged, as the very file would be on the night)
            shutil.copy2(template.removeprefix("sqlite:///"), db)

        def remove() -> None:
            for leftover in (db, Path(f"{db}.lock"), Path(f"{db}-journal")):
                leftover.unlink(missing_ok=True)

        return f"sqlite:///{db}", remove
    name = f"hk_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # FILE_COPY: a checkpoint and the files copied, not every page through the WAL
        copy = (
            f' TEMPLATE "{template.rsplit("/", 1)[1]}" STRATEGY FILE_COPY'
            if template is not None
            else ""
        )
        conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name, drop


def median(values: list[float]) -> float:
    return statistics.median(values)


def memory(steps: list[dict[str, Any]]) -> tuple[float, float]:
    """The largest memory of the steps' runs: held at once, and the sum of the peaks."""
    return (
        max(s["together_mb"] for s in steps),
        max(s["peak_mb"] + s["helpers_mb"] for s in steps),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hukou-bench"))
    parser.add_argument(
        "--night",
        action="store_true",
        help="the whole night: the rehearsal writes its workbook, and after verify the run's"
        " workbooks are written by township on --processes processes",
    )
    parser.add_argument(
        "--expect",
        action="store_true",
        help="the cutover held to the rehearsal's plan (cutover --expect, the night as the README"
        " runs it): the rehearsal writes its plan, each cutover runs on a copy of the rehearsed"
        " register",
    )
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="cutover --workers N (PostgreSQL): the cutover with N workers, and with one beside it",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="the import and its floor, the cutover and its floor, each into a fresh database"
        " (the cutover's: a copy of the imported register): medians",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    register = args.work / f"register-{args.persons}.csv"
    if not register.exists():
        t = time.perf_counter()
        partial = register.with_suffix(".partial")  # renamed once whole: a killed run leaves none
        with partial.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, PERSON_HEADER)
            writer.writeheader()
            writer.writerows(generate_persons(SampleOptions(("330211",), args.persons, seed=7)))
        partial.replace(register)
        print(f"generated {register} in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    drops = []
    try:
        url, drop = fresh_url(args.db, args.work)
        drops.append(drop)
        floor_url, floor_drop = fresh_url(args.db, args.work)
        drops.append(floor_drop)
        imp = child(AT_REST + IMPORT, url, str(register))  # the register the steps below run on
        child(AT_REST + SETTLE, url)  # unmeasured: as long before the night
        imp_floor = child(AT_REST + IMPORT_FLOOR, floor_url, str(register), "after")
        floor_drop()
        imports, import_floors = [imp], [imp_floor]
        for _ in range(args.repeat - 1):  # again, alternating, into fresh databases: medians
            again_url, again_drop = fresh_url(args.db, args.work)
            drops.append(again_drop)
            imports.append(child(AT_REST + IMPORT, again_url, str(register)))
            again_drop()
            floor_url, floor_drop = fresh_url(args.db, args.work)
            drops.append(floor_drop)
            import_floors.append(child(AT_REST + IMPORT_FLOOR, floor_url, str(register), "after"))
            floor_drop()
        floor_url, floor_drop = fresh_url(args.db, args.work)
        drops.append(floor_drop)
        imp_floor_before = child(AT_REST + IMPORT_FLOOR, floor_url, str(register), "before")
        floor_drop()
        floor_url, floor_drop = fresh_url(args.db, args.work)
        drops.append(floor_drop)
        imp_floor_shaped = child(AT_REST + IMPORT_FLOOR, floor_url, str(register), "shaped")
        floor_drop()
        reports = args.work / "reports" / uuid.uuid4().hex[:8]
        if args.night:
            rehearsal = child(REHEARSE_WITH_WORKBOOK, url, str(reports / "rehearsal"))
        elif args.expect:
            rehearsal = child(REHEARSE, url, str(reports / "rehearsal"))
        else:
            rehearsal = child(REHEARSE, url)
        plan = [str(next((reports / "rehearsal").glob("hukou-plan-*.json")))] if args.expect else []
        cuts: list[dict[str, Any]] = []
        alone: list[dict[str, Any]] = []  # with --workers N: the same cutover by one worker
        floors: list[dict[str, Any]] = []
        narrow: list[dict[str, Any]] = []

        def held_to(copy_url: str, tag: str) -> list[str]:
            """The plan a cutover on ``copy_url`` is held to. A copy of a SQLite file keeps the
            state the rehearsal found (its modification time too); a PostgreSQL copy is another
            database, whose rows a plan of the original does not vouch for: it is rehearsed
            itself, unmeasured, as the night rehearses the database it converts."""
            if not plan or args.db != "postgresql":
                return plan
            child(REHEARSE, copy_url, str(reports / tag))
            return [str(next((reports / tag).glob("hukou-plan-*.json")))]

        for i in range(args.repeat):
            # each cutover and each floor on a copy of the same imported register
            if args.workers > 1:
                one_url, one_drop = fresh_url(args.db, args.work, template=url)
                drops.append(one_drop)
                alone.append(
                    child(AT_REST + CUTOVER, one_url, "1", *held_to(one_url, f"alone-{i}"))
                )
                one_drop()
            copy_url, copy_drop = fresh_url(args.db, args.work, template=url)
            drops.append(copy_drop)
            cuts.append(
                child(
                    AT_REST + CUTOVER, copy_url, str(args.workers), *held_to(copy_url, f"cut-{i}")
                )
            )
            if i < args.repeat - 1:
                copy_drop()
            for shape, runs in (("same-rows", floors), ("narrow", narrow)):
                floor_copy, floor_copy_drop = fresh_url(args.db, args.work, template=url)
                drops.append(floor_copy_drop)
                runs.append(child(AT_REST + CUTOVER_FLOOR, floor_copy, shape))
                floor_copy_drop()
        ver = child(VERIFY, copy_url)
        report = (
            child(REPORT, copy_url, str(reports / "cutover"), str(args.processes))
            if args.night
            else None
        )
    finally:
        for drop in drops:
            drop()
        shutil.rmtree(args.work / "reports", ignore_errors=True)

    def phase(cut: dict[str, Any], name: str) -> float:
        return float(cut["phases"].get(name, 0.0))

    def closed(cut: dict[str, Any]) -> float:
        return phase(cut, "_end_转换 cutover") or float(cut["seconds"])

    window = median([closed(c) for c in cuts])
    batches = median([phase(c, "转换 cutover") for c in cuts])
    whole = median([c["seconds"] for c in cuts])
    closed_floor = median([f["seconds"] for f in floors])
    # the run of the median closed window (of an even number of runs, the upper of the middle two)
    cut = sorted(cuts, key=closed)[len(cuts) // 2]
    n = args.persons
    rows = [
        (
            "import",
            median([i["seconds"] for i in imports]),
            median([f["seconds"] for f in import_floors]),
            memory(imports),
        ),
        (
            "  (reference: a floor keeping its indexes row by row)",
            median([i["seconds"] for i in imports]),
            imp_floor_before["seconds"],
            None,
        ),
        (
            "  (reference: a floor into a table of the register's shape)",
            median([i["seconds"] for i in imports]),
            imp_floor_shaped["seconds"],
            None,
        ),
        (
            "rehearsal with its workbook"
            if args.night
            else "rehearsal (checks and plan digests, no workbook)",
            rehearsal["seconds"],
            None,
            memory([rehearsal]),
        ),
        (
            "cutover: closed window (to the last batch's commit)",
            window,
            closed_floor,
            memory(cuts),
        ),
        ("cutover: conversion batches alone", batches, closed_floor, None),
        *(
            [
                (
                    "  (the same cutover by one worker: closed window)",
                    median([phase(c, "_end_转换 cutover") for c in alone]),
                    closed_floor,
                    None,
                )
            ]
            if alone
            else []
        ),
        (
            "  (reference: a 5-column history, FLOORS.md's shape)",
            window,
            median([f["seconds"] for f in narrow]),
            None,
        ),
        ("cutover: whole command (with checks after the commit)", whole, None, None),
        ("verify", ver["seconds"], None, memory([ver])),
    ]
    if args.night:
        assert report is not None
        rows.append(
            (
                f"workbooks by township, {args.processes} processes",
                report["seconds"],
                None,
                memory([report]),
            )
        )
        night = sum(r[1] for r in rows if not r[0].startswith(("cutover: ", " "))) + whole
        rows.append(("the whole night (the steps above, one after another)", night, None, None))
    workers = f", {args.workers} workers" if args.workers > 1 else ""
    workers += ", the cutover held to the rehearsal's plan" if args.expect else ""
    print(
        f"\n{args.db}{workers}, {n:,} persons, {cut['converted']:,} converted,"
        f" verify ok: {ver['ok']}"
    )
    import_runs = ", ".join(f"{i['seconds']:.1f}" for i in imports)
    import_floor_runs = ", ".join(f"{f['seconds']:.1f}" for f in import_floors)
    print(
        f"import and its floor: medians of {len(imports)}"
        f" (imports {import_runs} s; floors {import_floor_runs} s)"
    )
    if args.expect:
        held = sum(1 for c in [*cuts, *alone] if c.get("not_read_again"))
        print(
            f"held to the plan: {held} of {len(cuts) + len(alone)} cutovers found the register"
            " the rehearsal read and did not read its records again"
        )
    windows = ", ".join(f"{phase(c, '_end_转换 cutover'):.1f}" for c in cuts)
    floor_runs = ", ".join(f"{f['seconds']:.1f}" for f in floors)
    print(
        f"cutover and its floor: medians of {args.repeat}"
        f" (closed windows {windows} s; floors {floor_runs} s)"
    )
    print(
        "MB at once: the step's processes' memory held at the same time (PSS, added up, the"
        " largest sum); sum of peaks: each process's own peak added up, an upper bound"
    )
    print(
        f"{'step':<55} {'seconds':>9} {'floor':>9} {'ratio':>7} {'µs/person':>10}"
        f" {'MB at once':>10} {'sum of peaks':>12}"
    )
    for name, seconds, floor, peak in rows:
        ratio = f"{seconds / floor:.2f}" if floor else ""
        floor_s = f"{floor:.1f}" if floor else ""
        at_once, bound = (f"{peak[0]:.0f}", f"{peak[1]:.0f}") if peak else ("", "")
        per = seconds / n * 1e6
        print(
            f"{name:<55} {seconds:>9.1f} {floor_s:>9} {ratio:>7} {per:>10.2f}"
            f" {at_once:>10} {bound:>12}"
        )
    print("phases of the cutover (the median run):")
    for name, seconds in cut["phases"].items():
        if not name.startswith("_end_"):
            print(f"  {name:<40} {seconds:>8.1f} s")


if __name__ == "__main__":
    main()
