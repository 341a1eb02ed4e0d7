"""The register checks: 错、重、假、漏 (wrong, duplicate, fake, missing) records, found before the cutover.

Every rehearsal and cutover runs them, and ``hukou-convert check`` runs them on their own. They only
read. Each exception is a :class:`~hukou_convert.findings.Finding` with a stable code from
:data:`CHECKS`, the record, an explanation in Chinese and a severity. The reform converts every
identifiable active record unconditionally, so by default a finding holds nothing back: it is listed
for review ("照常转换，列入异常清单待核实").

Scope. The records in the profile's scope (division-code prefix), active *and* inactive: a 注销 or
死亡 record can still carry a wrong or duplicated number, and the auditors want it on the list. The
``action`` of a finding on an inactive record says it is not converted anyway. Three checks narrow
this on purpose:

- DUPLICATE_ID_NUMBER: one number on two or more *active* records in scope (every record of the group,
  inactive ones included, is listed). One active record sharing its number only with inactive ones is
  the usual trail of a move or a cancellation, but also what an unrecorded death looks like: that is
  DUPLICATE_ID_WITH_INACTIVE, a warning. Numbers held by inactive records only are not reported.
- DUPLICATE_PERSON_IN_HOUSEHOLD and HOUSEHOLD_WITHOUT_HEAD look at active members only: a household
  whose head is 注销 has no head; a person registered twice and cancelled once is resolved. Collective
  households (集体户, 社区集体户, by 户别 or by the code) have no head by nature and are not checked.
- NO_DIVISION_CODE reports records with an empty division code whatever the profile: they fall outside
  every scope and no cutover would ever convert them.

Cost on a register of 10 million: the duplicate, household and missing-field checks are grouped SQL
(``GROUP BY … HAVING``, joined back to list the records); the per-record checks (check character,
birth date and sex against the number, division-code shape, 15-digit numbers) read the scope once,
streamed in key order, with plain Python per row. The address-code table of python-stdnum is asked
once per distinct (address code, year), never per record.

No ID number is logged or printed here; explanations name record ids, never a number or a name.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    and_,
    case,
    func,
    inspect,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
)
from stdnum.cn import ric
from stdnum.exceptions import ValidationError

from . import schema
from .census import in_scope, is_active
from .codes import CATEGORY_LABELS, CATEGORY_OF_LABEL, Category
from .db import sqlite_path, translate_errors
from .errors import RegisterStateError
from .findings import Finding, key_order
from .idnumbers import check_character, normalise, upgrade15
from .instants import CST, to_cst
from .profiles import Profile
from .progress import Progress, no_progress
from .register import BUILTIN_REGISTER, RecordKey, RegisterMap

ERROR = "error"
WARNING = "warning"

CONVERTED_AS_USUAL = "照常转换，列入异常清单待核实"
INACTIVE_NOT_CONVERTED = "非在册记录（注销等），本不在转换之列；列入异常清单待核实"
NEVER_CONVERTED = "不属于任何辖区范围，任何转换都不会处理；补录行政区划代码后重新检查"

_STREAM_ROWS = 20_000
HEAD_RELATIONS = ("本人", "户主")
_EARLIEST_BIRTH = date(1900, 1, 1)
_DIVISION_SHAPE = re.compile(r"^(?:\d{6}|\d{9}|\d{12})$")
_LISTED_OTHERS = 10  # other record ids named in a duplicate's explanation


@dataclass(frozen=True)
class CheckSpec:
    code: str  # stable: reports, workbooks and scripts key on it
    category: str  # 错 / 重 / 假 / 漏
    severity: str  # "error" | "warning"
    title: str  # in Chinese
    action: str = CONVERTED_AS_USUAL  # what the exception does to the conversion (active record)
    inactive_action: str = INACTIVE_NOT_CONVERTED  # the same for an inactive record


_SPECS = (
    CheckSpec("WRONG_CHECK_DIGIT", "错", ERROR, "公民身份号码校验码错误"),
    CheckSpec("BIRTH_DATE_MISMATCH", "错", ERROR, "号码中的出生日期与出生日期栏不符"),
    CheckSpec("SEX_MISMATCH", "错", ERROR, "号码中的性别（顺序码奇偶）与性别栏不符"),
    CheckSpec("MALFORMED_DIVISION_CODE", "错", ERROR, "行政区划代码格式错误"),
    CheckSpec("MALFORMED_ID_NUMBER", "错", ERROR, "公民身份号码格式错误"),
    CheckSpec("OLD_15_DIGIT_ID", "错", WARNING, "旧15位身份号码，应升位为18位"),
    CheckSpec(
        "CATEGORY_CONFLICT",
        "错",
        ERROR,
        "户口类别所含户别与户别栏不符",
        action="照常转换，户别按户口类别登记（原户别记入历史表），列入异常清单待核实",
    ),
    CheckSpec("DUPLICATE_ID_NUMBER", "重", ERROR, "同一公民身份号码登记于多条在册记录"),
    CheckSpec("DUPLICATE_ID_WITH_INACTIVE", "重", WARNING, "在册记录与注销等非在册记录同号"),
    CheckSpec("DUPLICATE_PERSON_IN_HOUSEHOLD", "重", ERROR, "同户内姓名、出生日期、性别相同"),
    CheckSpec("BIRTH_DATE_IMPOSSIBLE", "假", ERROR, "出生日期晚于截止时刻或早于1900年"),
    CheckSpec("UNKNOWN_ADDRESS_CODE", "假", WARNING, "号码地址码在区划表中无记载"),
    CheckSpec("MISSING_FIELD", "漏", ERROR, "必填项为空", action="照常转换，列入异常清单待补录"),
    CheckSpec("HOUSEHOLD_WITHOUT_HEAD", "漏", ERROR, "家庭户无户主（本人/户主）"),
    CheckSpec(
        "NO_DIVISION_CODE",
        "漏",
        ERROR,
        "行政区划代码为空，不属于任何辖区",
        action=NEVER_CONVERTED,
        inactive_action=NEVER_CONVERTED,
    ),
)

CHECKS: dict[str, CheckSpec] = {spec.code: spec for spec in _SPECS}
# What a profile may hold back (``hold_back``): the register checks and changes during the freeze.
HOLDABLE_CODES = frozenset(CHECKS) | {"LATE_CHANGE"}


@dataclass
class CheckReport:
    profile: str
    cutoff: datetime
    scanned: int  # records in scope read by the per-record checks
    findings: list[Finding]
    counts: dict[str, int] = field(default_factory=dict)  # every code of CHECKS, in table order

    @property
    def total(self) -> int:
        return len(self.findings)

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == WARNING)


# ---------------------------------------------------------------- per record, in Python


@dataclass(frozen=True)
class RecordFields:
    record_id: RecordKey
    id_number: str | None
    name: str | None
    sex: str | None
    birth_date: date | None
    division_code: str | None


Issue = tuple[str, str, str | None]  # (code, explanation, upgraded_id)


class AddressCodes:
    """Is a 6-digit address code known to python-stdnum's GB/T 2260 table in some year of a span?

    A number is assigned at first registration, which is no earlier than the birth and no later than
    the cutoff; codes are created and retired over time (330211 exists from 1985, python-stdnum's
    table starts in the early 1980s), so "unknown in the birth year" alone would flag nearly everyone
    born before 1985. The code is reported when it is known in no year from the birth year to the
    cutoff year. Each (code, year) is asked once.
    """

    def __init__(self) -> None:
        self._by_year: dict[tuple[str, int], bool] = {}
        self._by_span: dict[tuple[str, int, int], bool] = {}

    def known_in(self, code: str, year: int) -> bool:
        key = (code, year)
        found = self._by_year.get(key)
        if found is None:
            try:
                ric.get_birth_place(f"{code}{year:04d}01010000")
                found = True
            except (ValidationError, KeyError):
                # python-stdnum 2.2 raises KeyError('county') for a known province's unknown county
                found = False
            self._by_year[key] = found
        return found

    def known_between(self, code: str, first_year: int, last_year: int) -> bool:
        key = (code, first_year, last_year)
        found = self._by_span.get(key)
        if found is None:
            found = any(self.known_in(code, y) for y in range(first_year, last_year + 1))
            self._by_span[key] = found
        return found


def _date_of(digits: str) -> date | None:
    try:
        return date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def _impossible(day: date, cutoff: datetime) -> bool:
    return day < _EARLIEST_BIRTH or day >= _first_day_after(cutoff)


@functools.lru_cache(maxsize=8)
def _in_cst(cutoff: datetime) -> datetime:
    return to_cst(cutoff)


@functools.lru_cache(maxsize=8)
def _first_day_after(cutoff: datetime) -> date:
    """The first day whose start (China Standard Time) is at or after the cutoff: a birth on it
    or later is impossible. Once per cutoff, not once per record."""
    day = _in_cst(cutoff).date()
    return day if datetime.combine(day, time(), CST) >= cutoff else day + timedelta(days=1)


def record_issues(rec: RecordFields, cutoff: datetime, addresses: AddressCodes) -> list[Issue]:
    """The per-record checks of one record (no SQL): wrong, old, impossible or unknown parts."""
    issues: list[Issue] = []
    impossible: list[str] = []
    if rec.birth_date is not None and _impossible(rec.birth_date, cutoff):
        impossible.append("出生日期栏")
    if rec.division_code and not _DIVISION_SHAPE.match(rec.division_code):
        issues.append(
            (
                "MALFORMED_DIVISION_CODE",
                f"行政区划代码 {rec.division_code!r} 应为6、9或12位数字",
                None,
            )
        )
    number = normalise(rec.id_number) if rec.id_number else ""
    if number:
        id_birth: date | None = None
        sex_digit: str | None = None
        if len(number) == 18 and number[:17].isdigit() and number[17] in "0123456789X":
            expected = check_character(number[:17])
            if number[17] != expected:
                issues.append(
                    (
                        "WRONG_CHECK_DIGIT",
                        f"校验码应为 {expected}，登记为 {number[17]}（GB 11643，ISO 7064 MOD 11-2）",
                        None,
                    )
                )
            birth_digits, sex_digit = number[6:14], number[16]
        elif len(number) == 15 and number.isdigit():
            upgraded = upgrade15(number)
            assert upgraded is not None
            issues.append(
                (
                    "OLD_15_DIGIT_ID",
                    f"旧15位号码，可升位为18位号码（第7位前插入19，校验码 {upgraded[17]}）",
                    upgraded,
                )
            )
            birth_digits, sex_digit = "19" + number[6:12], number[14]
        else:
            issues.append(
                (
                    "MALFORMED_ID_NUMBER",
                    f"号码共 {len(number)} 位：应为18位（17位数字加校验码 0-9 或 X）或旧15位数字",
                    None,
                )
            )
            birth_digits = ""
        if birth_digits:
            id_birth = _date_of(birth_digits)
            if id_birth is None:
                issues.append(("MALFORMED_ID_NUMBER", "号码中的出生日期（第7-14位）不存在", None))
        if id_birth is not None:
            if rec.birth_date is not None and id_birth != rec.birth_date:
                days = abs((id_birth - rec.birth_date).days)
                issues.append(
                    (
                        "BIRTH_DATE_MISMATCH",
                        f"号码中的出生日期与出生日期栏不符（相差 {days} 天）",
                        None,
                    )
                )
                if _impossible(id_birth, cutoff):
                    impossible.append("号码中的出生日期")
            elif rec.birth_date is None and _impossible(id_birth, cutoff):
                impossible.append("号码中的出生日期")
            last_year = max(id_birth.year, _in_cst(cutoff).year)
            if not addresses.known_between(number[:6], id_birth.year, last_year):
                issues.append(
                    (
                        "UNKNOWN_ADDRESS_CODE",
                        f"地址码 {number[:6]} 在 python-stdnum 区划表中自出生年 {id_birth.year} 至"
                        f" {last_year} 年均无记载；地址码会随区划调整撤销，仅作提示，待核实",
                        None,
                    )
                )
        if sex_digit is not None and rec.sex in ("男", "女"):
            by_number = "男" if int(sex_digit) % 2 else "女"
            if by_number != rec.sex:
                issues.append(
                    (
                        "SEX_MISMATCH",
                        f"号码顺序码末位为{'奇' if by_number == '男' else '偶'}数（{by_number}），"
                        f"性别栏为{rec.sex}",
                        None,
                    )
                )
    if impossible:
        issues.append(
            (
                "BIRTH_DATE_IMPOSSIBLE",
                f"{'、'.join(impossible)}晚于截止时刻或早于1900年",
                None,
            )
        )
    return issues


# ---------------------------------------------------------------- the run


def run_checks(
    conn_or_engine: Connection | Engine,
    profile: Profile,
    *,
    cutoff: datetime,
    progress: Progress = no_progress,
    register: RegisterMap = BUILTIN_REGISTER,
) -> CheckReport:
    """Every check over the profile's scope; reads only. Findings are ordered by code, then record.
    Checks that need a field the register does not have (a legacy table without 户号, say) are
    not run."""
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be an aware instant")
    profile = register.effective_profile(profile)
    with translate_errors():
        if isinstance(conn_or_engine, Engine):
            with conn_or_engine.connect() as conn:
                try:
                    return _run(conn, register, profile, cutoff, progress)
                finally:
                    conn.rollback()
        return _run(conn_or_engine, register, profile, cutoff, progress)


def _run(
    conn: Connection, reg: RegisterMap, profile: Profile, cutoff: datetime, progress: Progress
) -> CheckReport:
    R = reg.table
    if reg.builtin and not inspect(conn).has_table(R.name):
        raise RegisterStateError(
            "this database holds no register: load one with 'hukou-convert import FILE' first"
        )
    active_statuses = frozenset(profile.active_statuses)
    findings: list[Finding] = []

    def add(code: str, row: Any, explanation: str, upgraded: str | None = None) -> None:
        spec = CHECKS[code]
        active = row.status in active_statuses
        findings.append(
            Finding(
                code=code,
                category=spec.category,
                severity=spec.severity,
                record_id=reg.key_of(row.record_id),
                id_number=row.id_number,
                name=row.name,
                explanation=explanation,
                action=spec.action if active else spec.inactive_action,
                upgraded_id=upgraded,
            )
        )

    scope = in_scope(R, profile.scope)

    def set_based(on: Connection) -> None:
        _duplicate_ids(on, reg, profile, scope, add)
        if reg.has("household_id", "name", "birth_date", "sex"):
            _duplicate_persons(on, reg, profile, scope, add)
        if reg.has("household_id", "relation"):
            _households_without_head(on, reg, profile, scope, add)
        _missing_fields(on, reg, profile, scope, add)
        if reg.has_category_column:
            _category_conflicts(on, reg, profile, scope, add)
        _no_division_code(on, reg, add)

    if _second_connection_sees_the_same(conn):
        # The set-based checks are the database's work (sorts, window functions): on a second
        # connection in a thread they run beside the per-record pass, which is Python's.
        with ThreadPoolExecutor(max_workers=1) as pool:
            beside = pool.submit(_on_own_connection, conn.engine, set_based)
            try:
                scanned = _per_record(conn, reg, scope, cutoff, progress, add)
            finally:
                beside_error = beside.exception()
            if beside_error is not None:
                raise beside_error
    else:
        scanned = _per_record(conn, reg, scope, cutoff, progress, add)
        set_based(conn)
    findings.sort(key=lambda f: (f.code, key_order(f.record_id), f.explanation))
    counts = Counter(f.code for f in findings)
    return CheckReport(
        profile=profile.name,
        cutoff=cutoff,
        scanned=scanned,
        findings=findings,
        counts={code: counts[code] for code in CHECKS},
    )


def _second_connection_sees_the_same(conn: Connection) -> bool:
    """Whether another connection reads what ``conn`` reads: not for an in-memory SQLite database,
    private to its connection. (The checks are only ever given connections that have not written.)"""
    return not (conn.dialect.name == "sqlite" and sqlite_path(conn.engine) is None)


def _on_own_connection(engine: Engine, work: Callable[[Connection], None]) -> None:
    with engine.connect() as own:
        try:
            work(own)
        finally:
            own.rollback()


class _Add(Protocol):
    """The finding collector passed to each check."""

    def __call__(
        self, code: str, row: Any, explanation: str, upgraded: str | None = None
    ) -> None: ...


def _person_columns(reg: RegisterMap) -> tuple[ColumnElement[Any], ...]:
    R = reg.table
    # labelled with the field names: rows read the same through a subquery on any register
    return (
        R.c.record_id.label("record_id"),
        R.c.id_number.label("id_number"),
        reg.column("name").label("name"),
        R.c.status.label("status"),
    )


def _blank(column: ColumnElement[Any]) -> ColumnElement[bool]:
    return or_(column.is_(None), column == "")


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, literal(1)), else_=literal(0))


def _per_record(
    conn: Connection,
    reg: RegisterMap,
    scope: ColumnElement[bool],
    cutoff: datetime,
    progress: Progress,
    add: _Add,
) -> int:
    """One streamed pass over the scope in key order."""
    R = reg.table
    total = int(conn.execute(select(func.count()).select_from(R).where(scope)).scalar_one())
    addresses = AddressCodes()
    query = (
        select(
            *_person_columns(reg), reg.column("sex"), reg.column("birth_date"), R.c.division_code
        )
        .where(scope)
        .order_by(R.c.record_id)
    )
    scanned = 0
    with progress("检查 checks", total, "人") as advance:
        # per execution, so a caller's connection is not switched to streaming for later statements
        result = conn.execute(
            query, execution_options={"stream_results": True, "yield_per": _STREAM_ROWS}
        )
        for partition in result.partitions():
            for row in partition:
                # by position: record_id, id_number, name, status, sex, birth_date, division
                rec = RecordFields(row[0], row[1], row[2], _sex(row[4]), _birth(row[5]), row[6])
                for code, explanation, upgraded in record_issues(rec, cutoff, addresses):
                    add(code, row, explanation, upgraded)
            scanned += len(partition)
            advance(len(partition))
    return scanned


# Legacy registers code 性别 as GB/T 2261.1 digits and may keep 出生日期 as text.
_SEX_CODES = {"1": "男", "2": "女"}


def _sex(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return _SEX_CODES.get(text, text)


def _birth(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value.date() if isinstance(value, datetime) else value
    digits = re.sub(r"\D", "", str(value))
    return _date_of(digits) if len(digits) == 8 else None


def _grouped(rows: Iterable[Any], key: str) -> Iterator[list[Any]]:
    """Consecutive rows with the same ``key`` column (the query orders by it)."""
    group: list[Any] = []
    for row in rows:
        if group and getattr(group[0], key) != getattr(row, key):
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def _others(record_ids: Sequence[RecordKey], own: RecordKey) -> str:
    others = [f"#{r}" for r in record_ids if r != own]
    shown = "、".join(others[:_LISTED_OTHERS])
    return shown + (f" 等 {len(others)} 条" if len(others) > _LISTED_OTHERS else "")


def person_key(number: ColumnElement[Any]) -> ColumnElement[str]:
    """One person's number whatever its form: the first 17 characters of the 18-digit form (an old
    15-digit number gets its century 19 inserted), so 330211650101011 and 330211196501010113
    are the same person, and a wrong check character does not hide a duplicate."""
    text = type_coerce(func.upper(number), String)
    upgraded = (
        type_coerce(func.substr(text, 1, 6), String)
        + literal_column("'19'", String)
        + type_coerce(func.substr(text, 7, 9), String)
    )
    return case(
        (func.length(text) == 15, upgraded), else_=type_coerce(func.substr(text, 1, 17), String)
    )


def _duplicate_ids(
    conn: Connection, reg: RegisterMap, profile: Profile, scope: ColumnElement[bool], add: _Add
) -> None:
    R = reg.table
    key = person_key(R.c.id_number)
    # One scan and a sort (window functions), never a join back on an expression: on a legacy
    # table with no index of ours that join is a nested loop.
    numbered = (
        select(
            *_person_columns(reg),
            key.label("k"),
            func.count().over(partition_by=key).label("n"),
            func.sum(_flag(is_active(R, profile.active_statuses)))
            .over(partition_by=key)
            .label("n_active"),
        )
        .where(scope, ~_blank(R.c.id_number))
        .subquery("numbered")
    )
    query = (
        select(numbered)
        .where(numbered.c.n > 1, numbered.c.n_active >= 1)
        .order_by(numbered.c.k, numbered.c.record_id)
    )
    for group in _grouped(conn.execute(query), "k"):
        ids = [r.record_id for r in group]
        n_active = int(group[0].n_active)
        code = "DUPLICATE_ID_NUMBER" if n_active >= 2 else "DUPLICATE_ID_WITH_INACTIVE"
        for row in group:
            add(
                code,
                row,
                f"同一公民身份号码在本辖区共 {len(ids)} 条记录（在册 {n_active} 条），"
                f"另见记录 {_others(ids, row.record_id)}",
            )


def _duplicate_persons(
    conn: Connection, reg: RegisterMap, profile: Profile, scope: ColumnElement[bool], add: _Add
) -> None:
    R = reg.table
    same = (R.c.household_id, R.c.name, R.c.birth_date, R.c.sex)
    where = and_(
        scope,
        is_active(R, profile.active_statuses),
        ~_blank(R.c.household_id),
        ~_blank(R.c.name),
        R.c.birth_date.is_not(None),
        ~_blank(R.c.sex),
    )
    members = (
        select(
            *_person_columns(reg),
            R.c.household_id.label("household_id"),
            func.min(R.c.record_id).over(partition_by=same).label("first"),
            func.count().over(partition_by=same).label("n"),
        )
        .where(where)
        .subquery("members")
    )
    query = select(members).where(members.c.n > 1).order_by(members.c.first, members.c.record_id)
    for group in _grouped(conn.execute(query), "first"):
        ids = [r.record_id for r in group]
        for row in group:
            add(
                "DUPLICATE_PERSON_IN_HOUSEHOLD",
                row,
                f"户号 {row.household_id} 内姓名、出生日期、性别相同的在册记录共 {len(ids)} 条，"
                f"另见记录 {_others(ids, row.record_id)}",
            )


def _collective(reg: RegisterMap, profile: Profile) -> ColumnElement[bool]:
    labels = [label for label, cat in CATEGORY_OF_LABEL.items() if cat is Category.COLLECTIVE]
    raws = [e.raw for e in profile.codes.entries() if e.category is Category.COLLECTIVE]
    by_code = reg.table.c.hukou_type.in_(raws)
    if not reg.has_category_column:
        return by_code
    return or_(reg.column("household_category").in_(labels), by_code)


def _households_without_head(
    conn: Connection, reg: RegisterMap, profile: Profile, scope: ColumnElement[bool], add: _Add
) -> None:
    R = reg.table
    has_relation = _flag(~_blank(R.c.relation))
    is_head = _flag(R.c.relation.in_(HEAD_RELATIONS))
    collective = _flag(_collective(reg, profile))
    households = (
        select(
            R.c.household_id,
            func.min(R.c.record_id).label("first"),
            func.count().label("n"),
        )
        .where(scope, is_active(R, profile.active_statuses), ~_blank(R.c.household_id))
        .group_by(R.c.household_id)
        .having(
            and_(
                func.sum(has_relation) > 0,
                func.sum(is_head) == 0,
                func.sum(collective) == 0,
            )
        )
        .subquery("headless")
    )
    query = (
        select(*_person_columns(reg), households.c.household_id.label("hh"), households.c.n)
        .join_from(R, households, R.c.record_id == households.c.first)
        .order_by(R.c.record_id)
    )
    for row in conn.execute(query):
        add(
            "HOUSEHOLD_WITHOUT_HEAD",
            row,
            f"户号 {row.hh} 共 {int(row.n)} 名在册人员，登记了与户主关系但无人为本人/户主"
            "（本条为该户记录号最小者）",
        )


def _missing_fields(
    conn: Connection, reg: RegisterMap, profile: Profile, scope: ColumnElement[bool], add: _Add
) -> None:
    """One pass: a CASE per required field. 户别 is required unless the code gives the category."""
    R = reg.table
    with_category = [e.raw for e in profile.codes.entries() if e.category is not None]
    # Only the fields this register has: a legacy table without 户号 lacks it for everyone, and
    # that is the mapping's business, not an exception of each record.
    required: list[tuple[str, ColumnElement[bool]]] = [
        ("公民身份号码", _blank(R.c.id_number)),
        *([("姓名", _blank(R.c.name))] if reg.has("name") else []),
        *([("性别", _blank(R.c.sex))] if reg.has("sex") else []),
        *([("出生日期", R.c.birth_date.is_(None))] if reg.has("birth_date") else []),
        *([("户号", _blank(R.c.household_id))] if reg.has("household_id") else []),
        ("户口性质", _blank(R.c.hukou_type)),
    ]
    if reg.has_category_column:
        no_category = and_(
            _blank(R.c.household_category),
            or_(R.c.hukou_type.is_(None), R.c.hukou_type.not_in(with_category)),
        )
        required.append(("户别", no_category))
    required.append(("人员状态", _blank(R.c.status)))
    flags = [_flag(condition).label(f"m{i}") for i, (_, condition) in enumerate(required)]
    query = (
        select(*_person_columns(reg), *flags)
        .where(scope, or_(*[condition for _, condition in required]))
        .order_by(R.c.record_id)
    )
    for row in conn.execute(query):
        missing = [label for i, (label, _) in enumerate(required) if int(getattr(row, f"m{i}"))]
        add("MISSING_FIELD", row, f"必填项为空：{'、'.join(missing)}")


def _category_conflicts(
    conn: Connection, reg: RegisterMap, profile: Profile, scope: ColumnElement[bool], add: _Add
) -> None:
    """A combined code says one 户别 and the 户别 column another (农业家庭户口 + 社区集体户, say):
    the conversion follows the code, so the household would change category silently."""
    R = reg.table
    from_code = {e.raw: e.category.value for e in profile.codes.entries() if e.category}
    if not from_code:
        return
    code_category = case(from_code, value=R.c.hukou_type)
    label_category = case(
        {label: cat.value for label, cat in CATEGORY_OF_LABEL.items()},
        value=reg.column("household_category"),
    )
    query = (
        select(*_person_columns(reg), R.c.hukou_type, R.c.household_category)
        .where(
            scope,
            R.c.hukou_type.in_(list(from_code)),
            label_category.is_not(None),
            code_category != label_category,
        )
        .order_by(R.c.record_id)
    )
    # The conversion resolves the conflict (the code's 户别, the resident code): a record a live run
    # converted is judged on its code and 户别 as of the cutoff, kept in the history, so the run's
    # own report and any after it list it as the rehearsal did.
    converted: dict[Any, Any] = {}
    H = schema.history
    if inspect(conn).has_table(H.name, schema=H.schema):
        kept_category = case(from_code, value=H.c.original_code)
        kept_label = case(
            {label: cat.value for label, cat in CATEGORY_OF_LABEL.items()},
            value=H.c.original_category_label,
        )
        for row in conn.execute(
            select(
                *_person_columns(reg),
                H.c.original_code.label("hukou_type"),
                H.c.original_category_label.label("household_category"),
            )
            .join_from(R, H, reg.ours(H) == R.c.record_id)
            .where(
                scope,
                H.c.reverted_at.is_(None),
                H.c.original_code.in_(list(from_code)),
                kept_label.is_not(None),
                kept_category != kept_label,
            )
        ):
            converted[row.record_id] = row
    rows = [r for r in conn.execute(query) if r.record_id not in converted]
    for row in [*rows, *converted.values()]:
        add(
            "CATEGORY_CONFLICT",
            row,
            f"户口类别 {row.hukou_type} 含户别 {CATEGORY_LABELS[Category(from_code[row.hukou_type])]}，"
            f"户别栏为 {row.household_category}",
        )


def _no_division_code(conn: Connection, reg: RegisterMap, add: _Add) -> None:
    R = reg.table
    query = select(*_person_columns(reg)).where(_blank(R.c.division_code)).order_by(R.c.record_id)
    for row in conn.execute(query):
        add("NO_DIVISION_CODE", row, "行政区划代码为空：不在任何辖区范围内，转换不会处理此记录")
