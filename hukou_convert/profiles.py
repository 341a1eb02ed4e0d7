"""Jurisdiction profiles: scope, cutoff or deadline, freeze, and code table, one per policy text.

The built-in profiles follow the five policy texts in shared/policies (see DOMAIN.md). A user profile is
a TOML file with the same fields; it may start from a built-in one with ``base = "zhenhai"``.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .codes import GA324_TABLE, Action, Category, CodeEntry, CodeTable, Nature
from .errors import ProfileError
from .instants import format_instant, parse_instant

_SCOPE_PREFIX = re.compile(r"[0-9]{2,12}")  # ASCII digits only, matched whole


@dataclass(frozen=True)
class Profile:
    name: str
    display_name: str
    policy_document: str
    scope: tuple[str, ...]
    codes: CodeTable = field(compare=False)
    cutoff: datetime | None = None  # fixed by the text: the instant itself
    deadline: datetime | None = None  # "…前": the latest allowed cutoff
    freeze_start: datetime | None = None  # 停办: register business stopped from here
    active_statuses: tuple[str, ...] = ("正常",)
    # exception codes whose records the real run holds back for manual review instead of converting
    hold_back: tuple[str, ...] = ()
    notes: str = ""

    def fingerprint(self) -> str:
        """What a resumed run must share with the run it continues: scope and code table."""
        payload = {
            "scope": sorted(self.scope),
            "active": sorted(self.active_statuses),
            "hold_back": sorted(self.hold_back),
            "codes": sorted(
                (e.raw, e.action.value, e.nature or "", e.category or "")
                for e in self.codes.entries()
            ),
        }
        return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """Every field but the code table (kept with the run on its own), for the run's record."""
        return json.dumps(
            {
                "name": self.name,
                "display_name": self.display_name,
                "policy_document": self.policy_document,
                "scope": list(self.scope),
                "cutoff": self.cutoff.isoformat() if self.cutoff else None,
                "deadline": self.deadline.isoformat() if self.deadline else None,
                "freeze_start": self.freeze_start.isoformat() if self.freeze_start else None,
                "active_statuses": list(self.active_statuses),
                "hold_back": list(self.hold_back),
                "notes": self.notes,
            },
            ensure_ascii=False,
        )

    @staticmethod
    def from_json(text: str, codes: CodeTable) -> Profile:
        data = json.loads(text)

        def instant(key: str) -> datetime | None:
            return datetime.fromisoformat(data[key]) if data.get(key) else None

        return Profile(
            name=data["name"],
            display_name=data["display_name"],
            policy_document=data["policy_document"],
            scope=tuple(data["scope"]),
            codes=codes,
            cutoff=instant("cutoff"),
            deadline=instant("deadline"),
            freeze_start=instant("freeze_start"),
            active_statuses=tuple(data["active_statuses"]),
            hold_back=tuple(data["hold_back"]),
            notes=data["notes"],
        )

    def cutoff_rule(self) -> str:
        if self.cutoff is not None:
            return f"fixed: {format_instant(self.cutoff)}"
        if self.deadline is not None:
            return f"by {format_instant(self.deadline)} (deadline)"
        return "none in the text: --cutoff required"


@dataclass(frozen=True)
class ResolvedCutoff:
    instant: datetime
    source: str  # how it was decided, shown to the operator


def _i(text: str) -> datetime:
    return parse_instant(text)


BUILTIN_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            name="zhenhai",
            display_name="宁波市镇海区",
            policy_document="镇海区人民政府 关于进一步推进户籍制度改革的实施意见 (2016-08-29)",
            scope=("330211",),
            codes=GA324_TABLE,
            cutoff=_i("2016-09-30 24:00"),
            freeze_start=_i("2016-09-30 00:00"),
            notes="2016年9月30日24时 cutover; 停办 on 2016-09-30; abolishes 蓝印户口 and 自理户口 too",
        ),
        Profile(
            name="wenzhou",
            display_name="温州市",
            policy_document="温政发〔2016〕26号 (2016-05-06)",
            scope=("3303",),
            codes=GA324_TABLE,
            deadline=_i("2016-11-30 24:00"),
            notes="by 2016-11-30; abolishes 自理口粮户口 etc.; stop 农转非/非转农",
        ),
        Profile(
            name="hangzhou",
            display_name="杭州市",
            policy_document="杭州市 关于进一步推进户籍管理制度改革的实施意见 (2016)",
            scope=("3301",),
            codes=GA324_TABLE,
            deadline=_i("2016-12-31 24:00"),
            notes="一元化户口登记 across the city by 2016-12-31",
        ),
        Profile(
            name="panjin",
            display_name="盘锦市",
            policy_document="盘政发〔2015〕53号 (2015-12-15)",
            scope=("2111",),
            codes=GA324_TABLE,
            notes="no date in the text: give --cutoff; community collective households (社区集体户)",
        ),
        Profile(
            name="ankang",
            display_name="安康市",
            policy_document="安政发〔2016〕33号 (2016-09-27)",
            scope=("6109",),
            codes=GA324_TABLE,
            notes="no date in the text: give --cutoff; statistics by urban/rural area",
        ),
    ]
}


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a user profile from a TOML file."""
    if name_or_path in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name_or_path]
    path = Path(name_or_path)
    if path.suffix.lower() == ".toml" or path.exists():
        return load_profile_file(path)
    known = ", ".join(BUILTIN_PROFILES)
    raise ProfileError(
        f"unknown profile {name_or_path!r}: use one of {known}, or the path of a profile .toml file"
    )


def load_profile_file(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: profile file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not a valid TOML profile: {exc}") from None
    try:
        return _profile_from_dict(data, str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: {exc}") from None


_KNOWN_KEYS = {
    "name",
    "display_name",
    "policy_document",
    "scope",
    "cutoff",
    "deadline",
    "freeze_start",
    "active_statuses",
    "hold_back",
    "base",
    "builtin_codes",
    "codes",
    "notes",
}


def _profile_from_dict(data: dict[str, Any], origin: str) -> Profile:
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    base: Profile | None = None
    if "base" in data:
        if data["base"] not in BUILTIN_PROFILES:
            raise ValueError(f"base {data['base']!r} is not a built-in profile")
        base = BUILTIN_PROFILES[data["base"]]
    if data.get("builtin_codes", True):
        codes = base.codes if base else GA324_TABLE
    else:
        codes = CodeTable([])
    overrides = [_code_entry(str(raw), spec) for raw, spec in dict(data.get("codes", {})).items()]
    codes = codes.with_overrides(overrides)

    def instant(key: str) -> datetime | None:
        if key in data:
            return parse_instant(str(data[key]))
        return getattr(base, key) if base else None

    name = str(data.get("name") or (base.name if base else Path(origin).stem))
    scope_raw = data.get("scope", list(base.scope) if base else None)
    if not scope_raw:
        raise ValueError("scope (a list of division-code prefixes) is required")
    scope = tuple(str(s) for s in scope_raw)
    for prefix in scope:
        if not _SCOPE_PREFIX.fullmatch(prefix):
            raise ValueError(f"scope prefix {prefix!r} must be 2 to 12 digits")
    profile = Profile(
        name=name,
        display_name=str(data.get("display_name", base.display_name if base else name)),
        policy_document=str(data.get("policy_document", base.policy_document if base else "")),
        scope=scope,
        codes=codes,
        cutoff=instant("cutoff"),
        deadline=instant("deadline"),
        freeze_start=instant("freeze_start"),
        active_statuses=tuple(
            str(s) for s in data.get("active_statuses", base.active_statuses if base else ("正常",))
        ),
        hold_back=_hold_back(data.get("hold_back", base.hold_back if base else ())),
        notes=str(data.get("notes", base.notes if base else "")),
    )
    if profile.cutoff is not None and profile.deadline is not None:
        profile = replace(profile, deadline=None)
    return profile


def _hold_back(raw: Any) -> tuple[str, ...]:
    from .checks import HOLDABLE_CODES  # checks depend on profiles: imported when needed

    codes = tuple(str(c) for c in raw)
    unknown = [c for c in codes if c not in HOLDABLE_CODES]
    if unknown:
        raise ValueError(
            f"hold_back: unknown exception code(s) {', '.join(unknown)}; known:"
            f" {', '.join(sorted(HOLDABLE_CODES))}"
        )
    return codes


def _code_entry(raw: str, spec: Any) -> CodeEntry:
    if not isinstance(spec, dict):
        raise ValueError(f"codes.{raw!r} must be a table with action/nature/category")
    try:
        action = Action(spec["action"])
        nature = Nature(spec["nature"]) if spec.get("nature") else None
        category = Category(spec["category"]) if spec.get("category") else None
    except KeyError as exc:
        raise ValueError(f"codes.{raw!r}: missing {exc}") from None
    except ValueError as exc:
        raise ValueError(f"codes.{raw!r}: {exc}") from None
    return CodeEntry(raw, action, nature, category, spec.get("label"))


def resolve_cutoff(profile: Profile, given: str | None, force: bool = False) -> ResolvedCutoff:
    """The cutoff instant of a run, by the profile's rule and what the operator gave."""
    chosen: datetime | None = None
    if given is not None:
        try:
            chosen = parse_instant(given)
        except ValueError as exc:
            raise ProfileError(f"--cutoff: {exc}") from None
    if profile.cutoff is not None:
        if chosen is None or chosen == profile.cutoff:
            return ResolvedCutoff(profile.cutoff, f"fixed by the {profile.name} policy text")
        if not force:
            raise ProfileError(
                f"the {profile.name} policy text fixes the cutoff at {format_instant(profile.cutoff)};"
                f" {format_instant(chosen)} is refused (--force-cutoff to override, e.g. for a drill)"
            )
        return ResolvedCutoff(chosen, "given with --cutoff, overriding the policy text (forced)")
    if profile.deadline is not None:
        if chosen is None:
            return ResolvedCutoff(
                profile.deadline, f"the {profile.name} deadline (no --cutoff given)"
            )
        if chosen > profile.deadline and not force:
            raise ProfileError(
                f"cutoff {format_instant(chosen)} is after the {profile.name} deadline"
                f" {format_instant(profile.deadline)}; refused (--force-cutoff to override)"
            )
        return ResolvedCutoff(chosen, "given with --cutoff")
    if chosen is None:
        raise ProfileError(
            f"the {profile.name} policy text gives no cutover date: give one with --cutoff,"
            " e.g. --cutoff '2016-12-31 24:00'"
        )
    return ResolvedCutoff(chosen, "given with --cutoff")
