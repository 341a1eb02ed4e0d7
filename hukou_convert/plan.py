"""The rehearsal's plan, and the real run's comparison with it.

A rehearsal writes a plan (JSON) beside its workbook: parameters, the census as of the cutoff, the
counts to convert by nature and 户别, the outcome of every in-flight application, the exceptions (by
code and record key), the register fingerprint, the digest of every block of 10,000 rows, and a
sidecar ``.records.gz`` with a short digest of every register row in key order. ``cutover --expect
PLAN`` compares before it commits anything (block by block, and record by record within a block that
differs: memory stays flat) and after it finishes. No personal data is in a plan: record keys and
digests only. On SQLite the plan also keeps the database file's state as the rehearsal found it
(:mod:`sqlitefile`): a run that finds the same file unchanged takes the plan's census and
fingerprint instead of reading the register again.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection

from . import __version__
from .census import Census, CensusLine
from .codes import CodeTable
from .errors import InputFileError
from .fingerprint import (
    Block,
    block_digest,
    read_chunks,
    read_rows,
    row_digest,
)
from .instants import format_instant, now
from .pgrows import RowsState
from .progress import Advance
from .register import RegisterMap
from .sqlitefile import FileState

PLAN_FORMAT = "hukou-convert-plan/1"
SHOWN_RECORDS = 1000  # record differences kept for display; all are counted


@dataclass(frozen=True)
class Difference:
    kind: str  # parameter | record | census | count | application | finding
    key: str
    expected: str
    actual: str


@dataclass
class PlanComparison:
    plan_path: str
    before: list[Difference] = field(default_factory=list)
    record_differences: int = 0  # all of them; ``before`` shows the first SHOWN_RECORDS
    after: list[Difference] = field(default_factory=list)
    accepted: bool = False  # the operator told the run to go ahead on a changed register
    compared_before: bool = True  # False when a resumed run could no longer compare
    # compared by the SQLite file's state: the file the rehearsal read, its records not read again
    unchanged_file: bool = False
    # compared by PostgreSQL's rows (:mod:`pgrows`): the rows the rehearsal read, not read again
    unchanged_rows: bool = False

    @property
    def matches(self) -> bool:
        return not self.before and not self.after


def _sort_key(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)


class PlanRecorder:
    """Receives (key, digest) per register row during the rehearsal's fingerprint pass."""

    def __init__(self, out_dir: Path, stem: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / f"{stem}.json"
        self.records_path = out_dir / f"{stem}.records.gz"
        self._tmp = out_dir / f".{stem}.records.gz.{os.getpid()}.tmp"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # closed by commit() or discard(): the recorder lives across the fingerprint pass
        self._raw = os.fdopen(fd, "wb")
        # level 1, not gzip.open's 9: most of each line is a random hex digest, which no level
        # shrinks much; 1M rows: 0.4 s against 1.4 s at level 6, a file 2.4 % larger
        self._gz: IO[str] = gzip.open(self._raw, "wt", encoding="ascii", compresslevel=1)  # noqa: SIM115
        self._lines: list[str] = []

    def __call__(self, key: str, digest: str) -> None:
        self._lines.append(f"{key}\t{digest}\n")
        if len(self._lines) >= 10_000:  # one write per 10,000 rows, not a call into gzip per row
            self._flush()

    def _flush(self) -> None:
        self._gz.write("".join(self._lines))
        self._lines.clear()

    def commit(self, plan: dict[str, Any]) -> Path:
        self._flush()
        self._gz.close()
        self._raw.close()
        os.replace(self._tmp, self.records_path)
        plan["records_file"] = self.records_path.name
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(plan, fh, ensure_ascii=False, indent=1)
        os.replace(tmp, self.path)
        return self.path

    def discard(self) -> None:
        self._gz.close()
        self._raw.close()
        self._tmp.unlink(missing_ok=True)


def plan_document(
    *,
    profile: str,
    profile_fingerprint: str,
    cutoff: str,
    database: str,
    fingerprint: str,
    blocks: list[Block],
    census: Census,
    converted_by: dict[str, int],
    applications: dict[str, str],
    findings: list[tuple[str, int | str | None]],
    sqlite_file: tuple[FileState, str | None, Census] | None = None,
    postgresql_rows: tuple[RowsState, str | None] | None = None,
) -> dict[str, Any]:
    """``sqlite_file``: the SQLite file's state as the rehearsal found it before and after
    reading, the register mapping it read through (None: the built-in register) and the census
    as it took it, before any application (a run applies the applications it really applies).
    ``postgresql_rows``: the register's rows as the rehearsal's snapshot saw them, and the
    mapping."""
    document: dict[str, Any] = {
        "format": PLAN_FORMAT,
        "tool_version": __version__,
        "written_at": format_instant(now()),
        "profile": profile,
        "profile_fingerprint": profile_fingerprint,
        "cutoff": cutoff,
        "database": database,
        "register_sha256": fingerprint,
        # [last key, rows, digest]: the real run reads the same key ranges and compares digests
        "blocks": [block.as_json() for block in blocks],
        "census": _census_lines(census),
        "counts": census_counts(census),
        # what the run will convert (records held back for review excluded)
        "to_convert_by": dict(sorted(converted_by.items())),
        "applications": applications,
        "findings": [[code, record_id] for code, record_id in findings],
    }
    if sqlite_file is not None:
        state, register, taken = sqlite_file
        document["sqlite_file"] = {
            **state.as_json(),
            "register": register,
            "census_taken": _census_lines(taken),
        }
    if postgresql_rows is not None:
        rows, register = postgresql_rows
        document["postgresql_rows"] = {**rows.as_json(), "register": register}
    return document


def _census_lines(census: Census) -> list[dict[str, Any]]:
    return [
        {
            "in_scope": line.in_scope,
            "active": line.active,
            "raw_code": line.raw_code,
            "category_label": line.category_label,
            "records": line.records,
        }
        for line in census.lines
    ]


def census_counts(census: Census) -> dict[str, int]:
    return {
        "total": census.total,
        "out_of_scope": census.out_of_scope,
        "inactive": census.inactive,
        "in_scope_active": census.in_scope_active,
        "to_convert": census.to_convert,
        "already_resident": census.already_resident,
        "not_permanent": census.not_permanent,
        "unmapped": sum(v.count for v in census.unmapped()),
    }


@dataclass
class Plan:
    path: Path
    data: dict[str, Any]

    @property
    def records_path(self) -> Path:
        return self.path.with_name(str(self.data["records_file"]))

    def records(self) -> Iterator[tuple[str, str]]:
        with gzip.open(self.records_path, "rt", encoding="ascii") as fh:
            for line in fh:
                key, digest = line.rstrip("\n").split("\t")
                yield key, digest

    def sqlite_file(
        self, register: RegisterMap, codes: CodeTable, needs_category: bool
    ) -> tuple[FileState, Census] | None:
        """The SQLite file's state the rehearsal read through ``register``'s mapping, and the
        census it took there before any application; None if it kept none (or not in this form)."""
        kept = self.data.get("sqlite_file")
        if not isinstance(kept, dict) or kept.get("register") != register.identity:
            return None
        state = FileState.from_json(kept)
        if state is None:
            return None
        try:
            lines = [
                CensusLine(
                    bool(line["in_scope"]),
                    bool(line["active"]),
                    line["raw_code"],
                    line["category_label"],
                    int(line["records"]),
                )
                for line in kept["census_taken"]
            ]
        except (KeyError, TypeError, ValueError):
            return None
        return state, Census(lines, codes, needs_category=needs_category)

    def postgresql_rows(self, register: RegisterMap) -> RowsState | None:
        """The register's rows as the rehearsal's snapshot on PostgreSQL saw them through
        ``register``'s mapping; None if it kept none."""
        kept = self.data.get("postgresql_rows")
        if not isinstance(kept, dict) or kept.get("register") != register.identity:
            return None
        return RowsState.from_json(kept)

    def blocks(self) -> list[Block] | None:
        """The plan's block digests (None in a plan written before they were kept: its records
        are then compared one by one)."""
        raw = self.data.get("blocks")
        if raw is None:
            return None
        return [Block(str(key), int(rows), str(digest)) for key, rows, digest in raw]


def load_plan(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(str(path), "plan file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(str(path), f"not a plan file written by a rehearsal ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise InputFileError(str(path), f"not a {PLAN_FORMAT} plan written by a rehearsal")
    plan = Plan(path, data)
    if not plan.records_path.exists():
        raise InputFileError(str(plan.records_path), "the plan's record digests are missing")
    return plan


class _Differences:
    def __init__(self) -> None:
        self.shown: list[Difference] = []
        self.count = 0

    def _note(self, key: str, expected: str, actual: str) -> None:
        self.count += 1
        if len(self.shown) < SHOWN_RECORDS:
            self.shown.append(Difference("record", key, expected, actual))


class BlockComparer(_Differences):
    """The register's row digests in one of the plan's blocks against the plan's, matched by key
    (at most one block's records held): whatever order the database's collation gives."""

    def __init__(self, expected: Iterator[tuple[str, str]]) -> None:
        super().__init__()
        self._planned = dict(expected)

    def __call__(self, key: str, digest: str) -> None:
        planned = self._planned.pop(key, None)
        if planned is None:
            self._note(key, "absent at the rehearsal", "added since")
        elif planned != digest:
            self._note(key, "as at the rehearsal", "changed since")

    def finish(self) -> None:
        for key in self._planned:
            self._note(key, "present at the rehearsal", "removed since")
        self._planned.clear()


class RecordComparer(_Differences):
    """Merge-joins the register's row digests (fed in key order) with the plan's (``expected``:
    all of them): a plan written before plans had blocks. Its order is numeric for keys of
    digits, else by code point, as the database gives it for integer keys."""

    def __init__(self, expected: Iterator[tuple[str, str]]) -> None:
        super().__init__()
        self._plan = expected
        self._pending: tuple[str, str] | None = next(self._plan, None)

    def __call__(self, key: str, digest: str) -> None:
        target = _sort_key(key)
        while self._pending is not None and _sort_key(self._pending[0]) < target:
            self._note(self._pending[0], "present at the rehearsal", "removed since")
            self._pending = next(self._plan, None)
        if self._pending is not None and self._pending[0] == key:
            if self._pending[1] != digest:
                self._note(key, "as at the rehearsal", "changed since")
            self._pending = next(self._plan, None)
        else:
            self._note(key, "absent at the rehearsal", "added since")

    def finish(self) -> None:
        while self._pending is not None:
            self._note(self._pending[0], "present at the rehearsal", "removed since")
            self._pending = next(self._plan, None)


@dataclass
class RecordComparison:
    """The register's records against the plan's: the fingerprint of the register as read, and
    the records added, removed or changed since the rehearsal (the first SHOWN_RECORDS kept)."""

    fingerprint: str
    shown: list[Difference] = field(default_factory=list)
    count: int = 0


def compare_records(
    conn: Connection, register: RegisterMap, plan: Plan, advance: Advance
) -> RecordComparison:
    """Read the register in the plan's key ranges, comparing each block's digest; read a block
    that differs (and any rows after the plan's last key) again record by record, merged with the
    plan's record digests of that range. A plan without blocks is compared record by record."""
    fingerprint = hashlib.sha256()
    blocks = plan.blocks()
    # (after, upto, offset in the plan's records, its records in the range; None: the rest)
    differing: list[tuple[Any, Any, int, int | None]] = []
    after: str | None = None
    offset = 0
    for block in blocks or []:
        digest, rows = block_digest(), 0
        for chunk in read_chunks(conn, register, after, block.last_key):
            fingerprint.update(chunk.data)
            digest.update(chunk.data)
            rows += chunk.rows
            advance(chunk.rows)
        if rows != block.rows or digest.hexdigest() != block.digest:
            differing.append((after, block.last_key, offset, block.rows))
        after, offset = block.last_key, offset + block.rows
    tail = 0
    for chunk in read_chunks(conn, register, after, None):
        fingerprint.update(chunk.data)
        tail += chunk.rows
        advance(chunk.rows)
    if blocks is None:
        differing.append((None, None, 0, None))
    elif tail:
        differing.append((after, None, offset, 0))
    comparison = RecordComparison(fingerprint.hexdigest())
    if differing:
        expected = plan.records()
        consumed = 0
        for lo, hi, start, in_plan in differing:
            for _ in itertools.islice(expected, start - consumed):
                pass
            comparer: BlockComparer | RecordComparer = (
                RecordComparer(expected)
                if in_plan is None
                else BlockComparer(itertools.islice(expected, in_plan))
            )
            for record_key, data in read_rows(conn, register, lo, hi):
                comparer(str(record_key), row_digest(data[:-1]))
            comparer.finish()
            consumed = start + (0 if in_plan is None else in_plan)
            comparison.count += comparer.count
            room = SHOWN_RECORDS - len(comparison.shown)
            comparison.shown.extend(comparer.shown[:room])
    return comparison


def compare_parameters(
    plan: Plan, profile: str, profile_fingerprint: str, cutoff: str
) -> list[Difference]:
    out = []
    for key, actual in (
        ("profile", profile),
        ("profile_fingerprint", profile_fingerprint),
        ("cutoff", cutoff),
    ):
        if str(plan.data.get(key)) != actual:
            out.append(Difference("parameter", key, str(plan.data.get(key)), actual))
    return out


def compare_census(plan: Plan, census: Census) -> list[Difference]:
    expected = plan.data.get("counts", {})
    actual = census_counts(census)
    return [
        Difference("census", name, str(expected.get(name)), str(value))
        for name, value in actual.items()
        if expected.get(name) != value
    ]


def compare_applications(plan: Plan, applications: dict[str, str]) -> list[Difference]:
    """The outcome of every in-flight application against the plan's: before writing (what the run
    is about to decide) and after (what it decided)."""
    expected: dict[str, str] = dict(plan.data.get("applications", {}))
    return [
        Difference("application", key, str(expected.get(key)), str(applications.get(key)))
        for key in sorted(set(expected) | set(applications))
        if expected.get(key) != applications.get(key)
    ]


def compare_outcome(
    plan: Plan,
    converted_by: dict[str, int],
    applications: dict[str, str],
    findings: list[tuple[str, int | str | None]],
) -> list[Difference]:
    """After the run: what it did against what the rehearsal said it would."""
    out: list[Difference] = []
    expected_by: dict[str, int] = dict(plan.data.get("to_convert_by", {}))
    for key in sorted(set(expected_by) | set(converted_by)):
        if expected_by.get(key, 0) != converted_by.get(key, 0):
            out.append(
                Difference(
                    "count", key, str(expected_by.get(key, 0)), str(converted_by.get(key, 0))
                )
            )
    out.extend(compare_applications(plan, applications))
    # record keys as the JSON kept them: integers, or a legacy table's text keys
    expected_findings = Counter((str(code), rid) for code, rid in plan.data.get("findings", []))
    actual_findings = Counter(findings)
    for code, rid in sorted(
        set(expected_findings) ^ set(actual_findings),
        key=lambda x: (x[0], _sort_key("" if x[1] is None else str(x[1]))),
    ):
        out.append(
            Difference(
                "finding",
                f"{code} record {rid}",
                "reported" if (code, rid) in expected_findings else "not reported",
                "reported" if (code, rid) in actual_findings else "not reported",
            )
        )
    return out
