"""Exceptions found in the register (错、重、假、漏) and around the cutover, as reported everywhere."""

from __future__ import annotations

from dataclasses import dataclass


def key_order(key: int | str | None) -> tuple[int, int, str]:
    """Findings without a record first, then keys in order (integers, or a legacy table's text)."""
    if key is None:
        return (0, 0, "")
    return (1, key, "") if isinstance(key, int) else (2, 0, key)


@dataclass(frozen=True)
class Finding:
    code: str  # stable category code, e.g. "WRONG_CHECK_DIGIT"
    category: str  # 错 / 重 / 假 / 漏 / 在办业务 / 停办期变更
    severity: str  # "error" | "warning"
    record_id: int | str | None  # the register's key (a legacy table's may be text)
    id_number: str | None
    name: str | None
    explanation: str  # in Chinese, for the auditors
    action: str  # what was done with it, in Chinese
    upgraded_id: str | None = None  # OLD_15_DIGIT_ID: the 18-digit form (never in explanation)
