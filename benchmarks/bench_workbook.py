"""Benchmark: the audit workbook of a large cutover is written with memory that does not grow with it.

Run on demand (not a test):  python benchmarks/bench_workbook.py [--sizes 100000,300000,1000000]

For each size: a synthetic register on SQLite (built once, cached under --work), the real cutover,
then, each in a fresh process so that peak RSS (getrusage ru_maxrss) is its own: loading the run, writing
its workbook, the same split by township (--split-by, --processes, default every core: the
wall-clock time and the largest worker's RSS), and the floor, raw openpyxl write-only of the same
number of rows x 10 columns on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from hukou_convert import schema
from hukou_convert.cutover import run_cutover
from hukou_convert.db import make_engine, parse_url
from hukou_convert.instants import CST
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.sample import SampleOptions, generate_persons

PROFILE = BUILTIN_PROFILES["zhenhai"]
CHUNK = 20_000


def peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM; ru_maxrss would keep the parent's size at
    the fork)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(db: Path, persons: int) -> dict[str, Any]:
    """A register of ``persons`` synthetic people, cut over; cached."""
    url = f"sqlite:///{db}"
    engine = make_engine(parse_url(url))
    if db.exists():
        return {"db": str(db), "cached": True}
    started = time.perf_counter()
    schema.ensure_schema(engine)
    changed = datetime(2016, 6, 1, 9, 0, tzinfo=CST)
    rows: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for p in generate_persons(SampleOptions(PROFILE.scope, persons, seed=7)):
            rows.append(
                {
                    "id_number": p["公民身份号码"],
                    "name": p["姓名"],
                    "sex": p["性别"],
                    "birth_date": date.fromisoformat(p["出生日期"]),
                    "household_id": p["户号"],
                    "hukou_type": p["户口性质"],
                    "household_category": p["户别"],
                    "division_code": p["行政区划代码"],
                    "status": p["人员状态"],
                    "updated_at": changed,
                    "address": p["住址"],
                    "police_station": p["派出所"],
                    "relation": p["与户主关系"],
                }
            )
            if len(rows) == CHUNK:
                conn.execute(insert(schema.register), rows)
                rows = []
        if rows:
            conn.execute(insert(schema.register), rows)
    built = time.perf_counter()
    result = run_cutover(engine, PROFILE, resolve_cutoff(PROFILE, None))
    engine.dispose()
    return {
        "db": str(db),
        "build_s": round(built - started, 1),
        "cutover_s": round(time.perf_counter() - built, 1),
        "converted": result.converted,
    }


def workbook(db: Path, out: Path) -> dict[str, Any]:
    """The report of the finished run; peak RSS after loading the run (census, findings of the
    register checks) and after writing the workbook, so the writer's own share shows."""
    from hukou_convert.cutover import load_run_result
    from hukou_convert.workbook import write_run_workbook

    engine = make_engine(parse_url(f"sqlite:///{db}"))
    started = time.perf_counter()
    result = load_run_result(engine, None)
    loaded = time.perf_counter()
    rss_loaded = peak_rss_mb()
    written = write_run_workbook(engine, result, out)
    return {
        "rows": written.detail_rows,
        "sheets": len(written.sheets),
        "load_s": round(loaded - started, 1),
        "seconds": round(time.perf_counter() - loaded, 1),
        "rss_loaded_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "file_mb": round(written.path.stat().st_size / 2**20, 1),
    }


def split(db: Path, out: Path, processes: int) -> dict[str, Any]:
    """The same report, its 变更明细 one workbook per township, ``processes`` at a time."""
    from hukou_convert.cutover import load_run_result
    from hukou_convert.workbook import write_run_workbook

    engine = make_engine(parse_url(f"sqlite:///{db}"))
    started = time.perf_counter()
    result = load_run_result(engine, None)
    written = write_run_workbook(engine, result, out, split_by="township", processes=processes)
    # the workers are the forkserver's children, not ours: each reports its own peak
    workers = max((a.peak_rss_mb for a in written.areas), default=0.0)
    return {
        "rows": written.detail_rows,
        "areas": len(written.areas),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(max(peak_rss_mb(), workers), 1),
    }


def floor(rows: int, out: Path) -> dict[str, Any]:
    """Raw openpyxl write-only, rows x 10 columns of short strings and numbers."""
    from openpyxl import Workbook

    started = time.perf_counter()
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("raw")
    limit = 1_048_576
    written = 0
    for i in range(rows):
        if written == limit:
            ws = wb.create_sheet(f"raw{i}")
            written = 0
        ws.append(
            [
                i,
                f"330211********{i % 10000:04d}",
                "张**",
                f"33021100{i:08d}",
                "330211001001",
                "骆驼街道金邑社区",
                "2",
                "农业家庭户口",
                "家庭户",
                datetime(2016, 10, 1),
            ]
        )
        written += 1
    out.mkdir(parents=True, exist_ok=True)
    wb.save(out / f"floor-{rows}.xlsx")
    return {
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def child(args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--work", default="/tmp/hukou-bench", type=Path)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--step", choices=["build", "workbook", "split", "floor"], help=argparse.SUPPRESS
    )
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work: Path = args.work
    if args.step:
        db = work / f"register-{args.n}.db"
        if args.step == "build":
            out = build(db, args.n)
        elif args.step == "workbook":
            out = workbook(db, work / "reports" / str(args.n))
        elif args.step == "split":
            out = split(db, work / "split" / str(args.n), args.processes)
        else:
            out = floor(args.n, work / "floor")
        print(json.dumps(out))
        return
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"{'persons':>9} {'rows':>9} {'load s':>7} {'RSS loaded':>10} {'write s':>8}"
        f" {'peak RSS MB':>11} {'file MB':>8} | {'split s':>8} {'areas':>5} {'split RSS':>9}"
        f" | {'floor s':>8} {'floor RSS MB':>12} | ratio split/floor"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        built = child(["--work", str(work), "--step", "build", "--n", str(n)])
        print(f"  built {n}: {built}", file=sys.stderr)
        wb = child(["--work", str(work), "--step", "workbook", "--n", str(n)])
        sp = child(
            [
                "--work",
                str(work),
                "--step",
                "split",
                "--n",
                str(n),
                "--processes",
                str(args.processes),
            ]
        )
        fl = child(["--work", str(work), "--step", "floor", "--n", str(wb["rows"])])
        ratio = sp["seconds"] / fl["seconds"] if fl["seconds"] else float("nan")
        print(
            f"{n:>9} {wb['rows']:>9} {wb['load_s']:>7} {wb['rss_loaded_mb']:>10}"
            f" {wb['seconds']:>8} {wb['peak_rss_mb']:>11} {wb['file_mb']:>8} |"
            f" {sp['seconds']:>8} {sp['areas']:>5} {sp['peak_rss_mb']:>9} |"
            f" {fl['seconds']:>8} {fl['peak_rss_mb']:>12} | {ratio:.2f}"
            f" ({args.processes} processes)",
            flush=True,
        )


if __name__ == "__main__":
    main()
