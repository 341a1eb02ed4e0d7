"""The division table the tool ships: NBS 2016 统计用区划和城乡划分代码 for the five jurisdictions.

Data from Vonng/adcode (CC BY 4.0), itself from the National Bureau of Statistics; see README.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Division:
    code: str  # 12 digits
    name: str
    level: int  # 2 city, 3 county/district, 4 township, 5 village/community
    parent_code: str
    urban_rural_code: str | None  # level 5 only: 1xx urban, 2xx rural

    @property
    def is_urban(self) -> bool | None:
        if not self.urban_rural_code:
            return None
        return self.urban_rural_code.startswith("1")


@cache
def shipped_divisions() -> tuple[Division, ...]:
    text = (
        resources.files("hukou_convert").joinpath("data/divisions_5cities.csv").read_text("utf-8")
    )
    return tuple(parse_divisions(io.StringIO(text)))


def parse_divisions(fh: io.TextIOBase | io.StringIO) -> list[Division]:
    out = []
    for row in csv.DictReader(fh):
        out.append(
            Division(
                code=row["code"],
                name=row["name"],
                level=int(row["level"]),
                parent_code=row["parent_code"],
                urban_rural_code=row.get("urban_rural_code") or None,
            )
        )
    return out


def villages_in(scope: tuple[str, ...]) -> list[Division]:
    """Level-5 units (居委会/村委会) under the scope prefixes."""
    return [
        d for d in shipped_divisions() if d.level == 5 and any(d.code.startswith(p) for p in scope)
    ]


def by_code() -> dict[str, Division]:
    return {d.code: d for d in shipped_divisions()}
