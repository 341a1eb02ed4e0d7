"""Instants as the policy texts write them.

A cutoff is an instant stored with its offset. Chinese documents write the end of a day as "24:00"
(2016-09-30 24:00 is 2016-10-01 00:00); a time without an offset is China Standard Time (+08:00, no
daylight saving).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone

CST = timezone(timedelta(hours=8), "CST")

_TEXT = re.compile(
    r"^\s*(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2})(?P<frac>\.\d+)?)?"
    r"\s*(?P<tz>Z|[+-]\d{2}:?\d{2})?\s*$"
)
_CHINESE = re.compile(
    r"^\s*(?P<y>\d{4})年(?P<mo>\d{1,2})月(?P<d>\d{1,2})日\s*(?:(?P<h>\d{1,2})[时時:](?:(?P<m>\d{1,2})分?)?)?\s*$"
)


def parse_instant(text: str) -> datetime:
    """Parse an ISO 8601 instant, "YYYY-MM-DD 24:00", or "2016年9月30日24时"; no offset means +08:00.

    A bare date is refused: whether it means the start or the end of the day is exactly the ambiguity
    a cutoff must not have.
    """
    m = _TEXT.match(text)
    if m:
        day = date.fromisoformat(m["date"])
        hour, minute = int(m["h"]), int(m["m"])
        second = int(m["s"] or 0)
        micro = round(float(m["frac"]) * 1_000_000) if m["frac"] else 0
        tz = _parse_offset(m["tz"])
        return _assemble(day, hour, minute, second, micro, tz, text)
    m = _CHINESE.match(text)
    if m and m["h"] is not None:
        day = date(int(m["y"]), int(m["mo"]), int(m["d"]))
        return _assemble(day, int(m["h"]), int(m["m"] or 0), 0, 0, CST, text)
    if re.match(r"^\s*\d{4}-\d{2}-\d{2}\s*$", text) or (m and m["h"] is None):
        raise ValueError(
            f"{text.strip()!r} is a date without a time: write the instant, e.g. "
            f"'{text.strip()} 24:00' for the end of that day or '{text.strip()} 00:00' for its start"
        )
    raise ValueError(
        f"{text!r} is not an instant: use ISO 8601 (2016-10-01T00:00+08:00) or "
        "'2016-09-30 24:00' (no offset means +08:00)"
    )


def _parse_offset(raw: str | None) -> timezone:
    if raw is None:
        return CST
    if raw == "Z":
        return UTC
    sign = 1 if raw[0] == "+" else -1
    digits = raw[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def _assemble(
    day: date, hour: int, minute: int, second: int, micro: int, tz: timezone, text: str
) -> datetime:
    if hour == 24:
        if minute or second or micro:
            raise ValueError(f"{text!r}: 24:00 is the end of the day; later times do not exist")
        return datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(days=1)
    try:
        return datetime(day.year, day.month, day.day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def to_cst(moment: datetime) -> datetime:
    """The same instant in China Standard Time (naive datetimes are taken as CST already)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=CST)
    return moment.astimezone(CST)


def format_instant(moment: datetime) -> str:
    """ISO 8601 in +08:00, seconds precision: how every instant is shown to people."""
    return to_cst(moment).isoformat(timespec="seconds")


def now() -> datetime:
    return datetime.now(CST)
