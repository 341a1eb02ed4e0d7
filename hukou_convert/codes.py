"""户口性质 code tables: what each raw legacy value means for the cutover.

Codes are data, not an enum: a jurisdiction's table maps every raw value found in its register to an
action and, for values to convert, a nature and (when the combined code carries one) a household
category. A raw value no table maps is never guessed (DOMAIN.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    CONVERT = "convert"  # a legacy type the reform abolishes: re-register as 居民户口
    RESIDENT = "resident"  # already 居民户口: nothing to do
    NOT_PERMANENT = (
        "not_permanent"  # 未落常住户口 / 暂住户口: not in the permanent register, untouched
    )


class Nature(StrEnum):
    AGRICULTURAL = "AGRICULTURAL"
    NON_AGRICULTURAL = "NON_AGRICULTURAL"
    SELF_SUPPLIED_GRAIN = "SELF_SUPPLIED_GRAIN"
    BLUE_STAMP = "BLUE_STAMP"
    LOCAL_URBAN = "LOCAL_URBAN"
    LODGING = "LODGING"
    OTHER = "OTHER"


NATURE_LABELS: dict[Nature, str] = {
    Nature.AGRICULTURAL: "农业",
    Nature.NON_AGRICULTURAL: "非农业",
    Nature.SELF_SUPPLIED_GRAIN: "自理口粮",
    Nature.BLUE_STAMP: "蓝印",
    Nature.LOCAL_URBAN: "地方城镇居民",
    Nature.LODGING: "寄住",
    Nature.OTHER: "其他",
}


class Category(StrEnum):
    """户别: the reform abolishes the nature, never the category."""

    FAMILY = "FAMILY"
    COLLECTIVE = "COLLECTIVE"


CATEGORY_LABELS: dict[Category, str] = {Category.FAMILY: "家庭户", Category.COLLECTIVE: "集体户"}

# 户别 values accepted on import, normalised to the label stored in the register. 社区集体户 (Panjin's
# community collective households) is a collective household and is kept as written.
CATEGORY_INPUTS: dict[str, str] = {
    "家庭户": "家庭户",
    "家庭": "家庭户",
    "家庭户口": "家庭户",
    "family": "家庭户",
    "集体户": "集体户",
    "集体": "集体户",
    "集体户口": "集体户",
    "collective": "集体户",
    "社区集体户": "社区集体户",
    "社区集体户口": "社区集体户",
}

# Register 户别 label -> category.
CATEGORY_OF_LABEL: dict[str, Category] = {
    "家庭户": Category.FAMILY,
    "集体户": Category.COLLECTIVE,
    "社区集体户": Category.COLLECTIVE,
}

RESIDENT_TYPE = "居民户口"  # what every converted record's 户口性质 becomes
NEW_TYPE = "RESIDENT"  # history.new_type


@dataclass(frozen=True)
class CodeEntry:
    raw: str
    action: Action
    nature: Nature | None = None
    category: Category | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.action is Action.CONVERT and self.nature is None:
            raise ValueError(f"code {self.raw!r}: a code to convert needs a nature")
        if self.action is not Action.CONVERT and self.nature is not None:
            raise ValueError(f"code {self.raw!r}: only codes to convert carry a nature")


class CodeTable:
    """Raw 户口性质 value -> entry. Lookup is exact on the value as stored (import strips blanks)."""

    def __init__(self, entries: Iterable[CodeEntry]) -> None:
        self._entries: dict[str, CodeEntry] = {}
        for entry in entries:
            self._entries[entry.raw] = entry

    def get(self, raw: str | None) -> CodeEntry | None:
        if raw is None:
            return None
        return self._entries.get(raw)

    def entries(self) -> list[CodeEntry]:
        return list(self._entries.values())

    def with_overrides(self, overrides: Iterable[CodeEntry]) -> CodeTable:
        merged = dict(self._entries)
        for entry in overrides:
            merged[entry.raw] = entry
        return CodeTable(merged.values())

    def label(self, raw: str) -> str:
        entry = self._entries.get(raw)
        return entry.label if entry and entry.label else raw

    def as_mapping(self) -> Mapping[str, CodeEntry]:
        return dict(self._entries)


def _ga324() -> list[CodeEntry]:
    c, r, n = Action.CONVERT, Action.RESIDENT, Action.NOT_PERMANENT
    N, F, C = Nature, Category.FAMILY, Category.COLLECTIVE
    numbered: list[tuple[str, str, Action, Nature | None, Category | None]] = [
        ("0", "未落常住户口", n, None, None),
        ("1", "非农业家庭户口", c, N.NON_AGRICULTURAL, F),
        ("2", "农业家庭户口", c, N.AGRICULTURAL, F),
        ("3", "非农业集体户口", c, N.NON_AGRICULTURAL, C),
        ("4", "农业集体户口", c, N.AGRICULTURAL, C),
        ("5", "自理口粮户口", c, N.SELF_SUPPLIED_GRAIN, None),
        ("6", "寄住户口", c, N.LODGING, None),
        ("7", "暂住户口", n, None, None),
        ("8", "其他户口", c, N.OTHER, None),
    ]
    entries: list[CodeEntry] = []
    for code, label, action, nature, category in numbered:
        entries.append(CodeEntry(code, action, nature, category, label))
        entries.append(CodeEntry(label, action, nature, category, label))
    bare: list[tuple[str, Action, Nature | None, Category | None]] = [
        ("农业", c, N.AGRICULTURAL, None),
        ("农业户口", c, N.AGRICULTURAL, None),
        ("非农业", c, N.NON_AGRICULTURAL, None),
        ("非农业户口", c, N.NON_AGRICULTURAL, None),
        ("城镇户口", c, N.NON_AGRICULTURAL, None),
        ("自理户口", c, N.SELF_SUPPLIED_GRAIN, None),
        ("蓝印户口", c, N.BLUE_STAMP, None),
        ("地方城镇居民户口", c, N.LOCAL_URBAN, None),
        ("居民户口", r, None, None),
        ("居民家庭户口", r, None, F),
        ("居民集体户口", r, None, C),
    ]
    entries.extend(CodeEntry(raw, a, nat, cat, raw) for raw, a, nat, cat in bare)
    return entries


GA324_TABLE = CodeTable(_ga324())


def code_table_to_json(table: CodeTable) -> str:
    """The table a run converted with, kept with the run (verify and resume read it back)."""
    import json

    rows = [
        [
            e.raw,
            e.action.value,
            e.nature.value if e.nature else None,
            e.category.value if e.category else None,
            e.label,
        ]
        for e in sorted(table.entries(), key=lambda e: e.raw)
    ]
    return json.dumps(rows, ensure_ascii=False)


def code_table_from_json(text: str) -> CodeTable:
    import json

    return CodeTable(
        CodeEntry(
            raw,
            Action(action),
            Nature(nature) if nature else None,
            Category(category) if category else None,
            label,
        )
        for raw, action, nature, category, label in json.loads(text)
    )
