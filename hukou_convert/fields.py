"""The fields of an import file: how each header is recognised and how each cell becomes a value.

A cell that cannot be represented raises :class:`Reject` with the reason; the row it belongs to goes
to the reject file. The field lists say which columns the register and the applications take.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from .codes import CATEGORY_INPUTS
from .errors import InputFileError
from .instants import CST, parse_instant
from .readers import Cell, TableFile


class Reject(Exception):
    def __init__(self, column: str | None, reason: str) -> None:
        self.column = column
        self.reason = reason


Parser = Callable[[Cell], Any]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    aliases: tuple[str, ...]
    parse: Parser
    required: bool = False  # the column must be present in the header


# ---------------------------------------------------------------- cell parsers


def parse_text(cell: Cell) -> str | None:
    if type(cell) is str:  # every CSV cell: the fast path
        return cell.strip() or None
    if cell is None:
        return None
    if isinstance(cell, bool):
        return "1" if cell else "0"
    if isinstance(cell, float):
        if cell.is_integer():
            return str(int(cell))
        return repr(cell)
    if isinstance(cell, datetime | date):
        return cell.isoformat()
    text = str(cell).strip()
    return text or None


def _code_text(cell: Cell) -> str | None:
    """Codes and numbers kept as text. A float that cannot hold its digits exactly is refused: Excel
    keeps 15 significant digits and silently destroys an 18-digit ID or household number."""
    if type(cell) is str:
        return cell.strip() or None
    if isinstance(cell, float) and abs(cell) >= 2**53:
        raise Reject(
            None, "stored as a number in Excel: its digits were lost; format the column as text"
        )
    if isinstance(cell, int) and not isinstance(cell, bool) and abs(cell) >= 10**15:
        raise Reject(None, "stored as a number in Excel: re-export the column as text")
    return parse_text(cell)


# The parsers that read a text cell (every CSV cell) as the text stripped, an empty one as None:
# the import's fast path reads such a column without calling them.
TEXT_PARSERS: frozenset[Parser] = frozenset({parse_text, _code_text})


def parse_id_number(cell: Cell) -> str | None:
    text = _code_text(cell)
    return None if text is None else "".join(text.split()).upper()


_SEX = {
    "男": "男",
    "1": "男",
    "m": "男",
    "male": "男",
    "女": "女",
    "2": "女",
    "f": "女",
    "female": "女",
}


def _sex(cell: Cell) -> str | None:
    text = parse_text(cell)
    if text is None:
        return None
    value = _SEX.get(text.lower())
    if value is None:
        raise Reject(None, f"性别 {text!r} is not 男/女 or 1/2")
    return value


_EXCEL_EPOCH = date(1899, 12, 30)
_DATE_RE = re.compile(r"^(\d{4})[-/.年]?(\d{1,2})[-/.月]?(\d{1,2})日?$")


def _date(cell: Cell) -> date | None:
    if cell is None:
        return None
    if isinstance(cell, datetime):
        return cell.date()
    if isinstance(cell, date):
        return cell
    if isinstance(cell, int | float) and not isinstance(cell, bool):
        if 1 <= cell < 2_958_466:  # an Excel serial date
            return _EXCEL_EPOCH + timedelta(days=int(cell))
        cell = str(int(cell))
    text = str(cell).strip()
    if not text:
        return None
    match = _DATE_RE.match(text)
    if match is None or (len(text) == 8 and not text.isdigit()):
        raise Reject(None, f"{text!r} is not a date (YYYY-MM-DD or YYYYMMDD)")
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise Reject(None, f"{text!r} is not a date that exists") from None


def _instant(cell: Cell) -> datetime | None:
    if cell is None:
        return None
    if isinstance(cell, datetime):
        return cell.replace(tzinfo=CST) if cell.tzinfo is None else cell
    if isinstance(cell, date):
        return datetime(cell.year, cell.month, cell.day, tzinfo=CST)
    text = str(cell).strip()
    if not text:
        return None
    if re.match(r"^\d{4}-\d{2}-\d{2}$", text) or re.match(r"^\d{8}$", text):
        day = _date(text)
        assert day is not None
        return datetime(day.year, day.month, day.day, tzinfo=CST)
    try:
        return parse_instant(text.replace("/", "-"))
    except ValueError:
        raise Reject(None, f"{text!r} is not a date and time") from None


def _category(cell: Cell) -> str | None:
    text = parse_text(cell)
    if text is None:
        return None
    value = CATEGORY_INPUTS.get(text.lower())
    if value is None:
        raise Reject(None, f"户别 {text!r} is neither 家庭户 nor 集体户")
    return value


def _status(cell: Cell) -> str:
    return parse_text(cell) or "正常"


PERSON_FIELDS: list[FieldSpec] = [
    FieldSpec(
        "id_number", ("公民身份号码", "身份证号码", "身份证号", "id_number"), parse_id_number, True
    ),
    FieldSpec("name", ("姓名", "name"), parse_text, True),
    FieldSpec("sex", ("性别", "sex"), _sex),
    FieldSpec("birth_date", ("出生日期", "birth_date"), _date),
    FieldSpec("household_id", ("户号", "household_id"), _code_text, True),
    FieldSpec("hukou_type", ("户口性质", "户口类别", "hukou_type"), _code_text, True),
    FieldSpec("household_category", ("户别", "household_category"), _category),
    FieldSpec("division_code", ("行政区划代码", "行政区划", "division_code"), _code_text, True),
    FieldSpec("status", ("人员状态", "status"), _status),
    FieldSpec("updated_at", ("变更时间", "updated_at"), _instant),
    FieldSpec("address", ("住址", "address"), parse_text),
    FieldSpec("police_station", ("派出所", "police_station"), parse_text),
    FieldSpec("relation", ("与户主关系", "relation"), parse_text),
]

_KINDS = {"农转非": "农转非", "非转农": "非转农"}
_APP_STATUS = {"已批准": "已批准", "待审批": "待审批", "已驳回": "已驳回"}


def _choice(options: dict[str, str], label: str) -> Parser:
    def parse(cell: Cell) -> str:
        text = parse_text(cell)
        if text is None or text not in options:
            raise Reject(None, f"{label} {text!r} is not one of {'/'.join(options)}")
        return options[text]

    return parse


def _required_text(cell: Cell) -> str:
    text = _code_text(cell)
    if text is None:
        raise Reject(None, "empty")
    return text


def _required_instant(cell: Cell) -> datetime:
    value = _instant(cell)
    if value is None:
        raise Reject(None, "empty")
    return value


APPLICATION_FIELDS: list[FieldSpec] = [
    FieldSpec("application_id", ("业务编号", "application_id"), _required_text, True),
    FieldSpec("id_number", ("公民身份号码", "身份证号码", "id_number"), parse_id_number, True),
    FieldSpec("kind", ("业务类型", "kind"), _choice(_KINDS, "业务类型"), True),
    FieldSpec("applied_at", ("申请时间", "applied_at"), _required_instant, True),
    FieldSpec("status", ("审批状态", "status"), _choice(_APP_STATUS, "审批状态"), True),
    FieldSpec("approved_at", ("审批时间", "approved_at"), _instant),
]


# ---------------------------------------------------------------- header


def map_header(table: TableFile, fields: list[FieldSpec]) -> dict[str, int]:
    """Field name -> column index. Missing required columns or a column given twice are errors."""
    lookup: dict[str, FieldSpec] = {}
    for spec in fields:
        for alias in spec.aliases:
            lookup[alias.lower()] = spec
    positions: dict[str, int] = {}
    for index, title in enumerate(table.header):
        found = lookup.get(title.strip().lstrip("\ufeff").lower())
        if found is None:
            continue  # extra columns are ignored
        spec = found
        if spec.name in positions:
            first = table.header[positions[spec.name]]
            raise InputFileError(
                str(table.path),
                f"columns {first!r} and {title!r} both give {spec.name}: keep one",
                table.header_line,
                column_letter(index),
            )
        positions[spec.name] = index
    missing = [s for s in fields if s.required and s.name not in positions]
    if missing:
        names = ", ".join(f"{s.aliases[0]}/{s.aliases[-1]}" for s in missing)
        raise InputFileError(
            str(table.path), f"the header lacks required column(s): {names}", table.header_line
        )
    return positions


def column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters
