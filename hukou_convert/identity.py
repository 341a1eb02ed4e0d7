"""Bulk identity look-up for other departments: a file of ID numbers in, the same rows out with the
original type before the reform appended.

The input is what a department sends: CSV (UTF-8 or GBK) or xlsx, any header, 15- or 18-digit
numbers, stray spaces, lower-case x. Every row comes back, in order: IDs not found, invalid, or
converted only by a reverted run are marked as such, never dropped. ID numbers and names are
masked in the output unless asked otherwise; the output is written atomically, 0600.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path

from openpyxl import Workbook
from sqlalchemy import Engine

from .errors import InputFileError, UsageError
from .history import LookupResult, current_entry, lookup, run_labels
from .idnumbers import mask_id, mask_name, normalise
from .instants import format_instant
from .progress import Progress, no_progress
from .readers import Row, TableFile, is_bad_record, open_table
from .xlsx import Column, Kind, PageSetup, TableWriter, discard, is_risky, save_atomically

_ID_HEADERS = (
    "公民身份号码",
    "身份证号码",
    "身份证号",
    "身份证",
    "证件号码",
    "id_number",
    "id",
    "idno",
)
_NAME_HEADERS = ("姓名", "name")
_ID_SHAPE = re.compile(r"^(\d{17}[\dX]|\d{15})$")
_CHUNK = 5_000
_SNIFF_ROWS = 50

STATUS_LABELS = {
    "found": "已转换",
    "reverted": "已回退",
    "not-found": "未找到",
    "invalid": "号码无效",
    "ambiguous": "多条记录待核实",
}
APPENDED = [
    "查询结果",
    "原户口类型",
    "原户口性质代码",
    "原户口性质",
    "户别",
    "生效时间",
    "转换批次",
    "备注",
]


@dataclass
class BulkLookupResult:
    input: str
    output: str
    id_column: str
    rows: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    sha256: str = ""


def appended_headers(header: list[str]) -> list[str]:
    """The answer's column names, told apart from the input's own (a 备注 column, say)."""
    taken = {h.strip() for h in header}
    return [f"{name}（查询）" if name in taken else name for name in APPENDED]


def lookup_file(
    engine: Engine,
    path: Path,
    out: Path,
    *,
    column: str | None = None,
    encoding: str | None = None,
    unmasked: bool = False,
    progress: Progress = no_progress,
) -> BulkLookupResult:
    """Answer every row of a file of ID numbers; write ``out`` as .xlsx or .csv (by suffix)."""
    if out.suffix.lower() not in (".xlsx", ".csv"):
        raise UsageError(f"--out {out}: the result is written as .xlsx or .csv")
    table = open_table(path, encoding)
    id_index = _id_column(table, column, progress)
    name_indexes = {i for i, h in enumerate(table.header) if h.strip().lower() in _NAME_HEADERS}
    result = BulkLookupResult(str(path), str(out), table.header[id_index])
    labels = run_labels(engine)
    sink: _XlsxSink | _CsvSink = (
        _XlsxSink(out, table.header, id_index, unmasked)
        if out.suffix.lower() == ".xlsx"
        else _CsvSink(out, table.header)
    )
    try:
        rows = table.rows(progress)
        while chunk := list(islice(rows, _CHUNK)):
            numbers = [_cell_text(r, id_index) for r in chunk]
            answers = lookup(engine, numbers, labels)
            for row, answer in zip(chunk, answers, strict=True):
                status, extra = _answer(answer)
                cells = [
                    _masked(_cell_text(row, i), i, id_index, name_indexes, unmasked)
                    for i in range(len(table.header))
                ]
                sink.append(cells, status, extra)
                result.rows += 1
                result.by_status[status] = result.by_status.get(status, 0) + 1
        result.sha256 = sink.commit()
    except BaseException:
        sink.discard()
        raise
    return result


def _cell_text(row: Row, index: int) -> str:
    if is_bad_record(row.cells) is not None or index >= len(row.cells):
        return ""
    value = row.cells[index]
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a 15-digit number typed into Excel survives as a float
    return str(value).strip()


def _masked(text: str, index: int, id_index: int, names: set[int], unmasked: bool) -> str:
    if unmasked:
        return text
    if index == id_index:
        return mask_id(normalise(text))
    if index in names:
        return mask_name(text)
    return text


def _answer(answer: LookupResult) -> tuple[str, list[object]]:
    entry = current_entry(answer)
    if entry is not None:
        status = "ambiguous" if answer.status == "ambiguous" else "found"
    elif answer.entries:
        entry = answer.entries[0]
        status = "reverted"
    else:
        return answer.status, ["", "", "", "", None, "", answer.note]
    note = answer.note
    if status == "reverted":
        reverted_at = entry.reverted_at
        note = (note + "；" if note else "") + (
            f"转换已于 {format_instant(reverted_at)} 回退" if reverted_at else "转换已回退"
        )
    return status, [
        entry.original_label,
        entry.original_code or "",
        entry.nature_label,
        entry.category_label,
        entry.effective_at,
        entry.run_id,
        note,
    ]


def _id_column(table: TableFile, column: str | None, progress: Progress) -> int:
    headers = [h.strip().lower() for h in table.header]
    if column is not None:
        if column.strip().lower() not in headers:
            raise InputFileError(
                str(table.path), f"no column {column!r} in the header", table.header_line
            )
        return headers.index(column.strip().lower())
    for alias in _ID_HEADERS:
        if alias in headers:
            return headers.index(alias)
    # no known header: the column whose values look like ID numbers
    sample = list(islice(table.rows(no_progress), _SNIFF_ROWS))
    best, best_hits = -1, 0
    for index in range(len(table.header)):
        hits = sum(1 for r in sample if _ID_SHAPE.match(normalise(_cell_text(r, index)) or "-"))
        if hits > best_hits:
            best, best_hits = index, hits
    if best < 0 or best_hits * 2 < len(sample):
        raise InputFileError(
            str(table.path),
            "no column of ID numbers found: name it with --column",
            table.header_line,
        )
    return best


class _XlsxSink:
    def __init__(self, out: Path, header: list[str], id_index: int, unmasked: bool) -> None:
        self.out = out
        self.unmasked = unmasked
        self.wb = Workbook(write_only=True)
        columns = [
            Column(
                h or f"列{i + 1}", 22 if i == id_index else 14, "code" if i == id_index else "text"
            )
            for i, h in enumerate(header)
        ]
        layout: list[tuple[float, Kind]] = [
            (10, "text"),
            (16, "text"),
            (12, "code"),
            (12, "text"),
            (8, "text"),
            (20, "datetime"),
            (22, "code"),
            (40, "text"),
        ]
        columns += [
            Column(name, width, kind)
            for name, (width, kind) in zip(appended_headers(header), layout, strict=True)
        ]
        self.table = TableWriter(self.wb, "查询结果", columns, PageSetup("户口性质历史查询结果"))

    def append(self, cells: list[str], status: str, extra: list[object]) -> None:
        self.table.append([*cells, STATUS_LABELS[status], *extra])

    def commit(self) -> str:
        self.table.finish()
        if self.unmasked:
            self.table.append_below(["未脱敏 UNMASKED：本文件含完整公民身份号码"])
        self.out.parent.mkdir(parents=True, exist_ok=True)
        return save_atomically(self.wb, self.out)

    def discard(self) -> None:
        discard(self.wb)


class _CsvSink:
    def __init__(self, out: Path, header: list[str]) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.fh = os.fdopen(fd, "w", encoding="utf-8-sig", newline="")
        self.writer = csv.writer(self.fh)
        self.writer.writerow([*header, *appended_headers(header)])

    def append(self, cells: list[str], status: str, extra: list[object]) -> None:
        when = extra[4]
        shown = format_instant(when) if isinstance(when, datetime) else ""
        row = [*cells, STATUS_LABELS[status], *extra[:4], shown, *extra[5:]]
        # a spreadsheet opening the CSV must not run a formula from the other department's file
        self.writer.writerow(["'" + v if isinstance(v, str) and is_risky(v) else v for v in row])

    def commit(self) -> str:
        self.fh.close()
        os.replace(self.tmp, self.out)
        return hashlib.sha256(self.out.read_bytes()).hexdigest()

    def discard(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)
