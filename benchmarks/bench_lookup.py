"""Benchmark: bulk identity look-up of 100,000 ID numbers (issue: "100,000 IDs in seconds").

Run on demand (not a test):  python benchmarks/bench_lookup.py [--persons 200000] [--ids 100000]

Builds a synthetic register on SQLite, cuts it over, then answers a CSV of ``--ids`` numbers (most of
them converted, some already resident, some unknown) into .xlsx and .csv, printing the time of each
and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hukou_convert.cutover import run_cutover  # noqa: E402
from hukou_convert.db import make_engine, parse_url  # noqa: E402
from hukou_convert.identity import lookup_file  # noqa: E402
from hukou_convert.ingest import import_register  # noqa: E402
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff  # noqa: E402
from hukou_convert.sample import SampleOptions, write_sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--ids", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hukou-lookup-"))
    register = work / "register.csv"
    write_sample(register, SampleOptions(("330211",), args.persons, seed=3))
    engine = make_engine(parse_url(f"sqlite:///{work / 'hukou.db'}"))
    import_register(engine, register, reject_path=work / "rejects.csv")
    profile = BUILTIN_PROFILES["zhenhai"]
    run_cutover(engine, profile, resolve_cutoff(profile, None))

    with register.open(encoding="utf-8") as fh:
        numbers = [row["公民身份号码"] for row in csv.DictReader(fh)]
    rng = random.Random(5)
    asked = [rng.choice(numbers) for _ in range(args.ids)]
    ids = work / "ids.csv"
    with ids.open("w", encoding="gbk", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["序号", "身份证号"])
        writer.writerows([i, f" {n.lower()} "] for i, n in enumerate(asked, start=1))

    print(f"{args.ids:,} IDs against a register of {args.persons:,} (SQLite)")
    for suffix in (".csv", ".xlsx"):
        started = time.perf_counter()
        result = lookup_file(engine, ids, work / f"answer{suffix}")
        seconds = time.perf_counter() - started
        print(
            f"  {suffix:<6} {seconds:6.1f} s  {args.ids / seconds:,.0f} IDs/s  {result.by_status}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS of the process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
