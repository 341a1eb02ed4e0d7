"""The one exception tree of hukou-convert.

Every failure the operator can act on is a :class:`HukouError` subclass carrying its data; the CLI turns
it into a one-line message and the exit code declared here, in one place (``cli.main``). Messages never
contain an ID number or a password: callers pass counts, file positions and record keys, not values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class HukouError(Exception):
    """Base of every expected failure. ``exit_code`` is what the process exits with."""

    exit_code = 1

    def message(self) -> str:
        return str(self)


class UsageError(HukouError):
    """The command line asked for something inconsistent (beyond what click checks)."""

    exit_code = 2


class InputFileError(HukouError):
    """A file that cannot be read at all: nothing was loaded from it."""

    exit_code = 3

    def __init__(
        self, path: str, reason: str, line: int | None = None, column: str | None = None
    ) -> None:
        self.path = path
        self.reason = reason
        self.line = line
        self.column = column
        super().__init__(self.message())

    def message(self) -> str:
        where = self.path
        if self.line is not None:
            where += f", line {self.line}"
        if self.column is not None:
            where += f", column {self.column}"
        return f"{where}: {self.reason}"


class UnprovenBytes(InputFileError):
    """A large CSV file opened on its first megabyte (:func:`readers.open_table` with
    ``whole=False``) held a byte further on that its encoding does not decode, or a NUL byte,
    found while it was being loaded: nothing was imported. The import then checks the whole file
    first, as it does any other, and loads it again in the encoding that reads it all, or stops
    with that check's message; this reaches the operator only if the file changed in between."""


class ProfileError(HukouError):
    """A jurisdiction profile, profile file or cutoff is missing or invalid."""

    exit_code = 4


class RegisterStateError(HukouError):
    """The register is not in the state the command needs (empty, already loaded, no schema…)."""

    exit_code = 5


@dataclass(frozen=True)
class UnmappedValue:
    raw_code: str | None
    count: int
    # True: the code is mapped but names no 户别, and the register has no 户别 column to take it
    # from, so the tool cannot tell which resident code to write
    no_category: bool = False


class UnmappedCodesError(HukouError):
    """Raw 户口性质 values in scope that the profile's code table does not map: never guessed."""

    exit_code = 6

    def __init__(self, values: Sequence[UnmappedValue], rehearsal: bool) -> None:
        self.values = list(values)
        self.rehearsal = rehearsal
        super().__init__(self.message())

    def message(self) -> str:
        head = (
            "the real cutover would refuse to start"
            if self.rehearsal
            else "cutover refused before writing anything"
        )
        parts = []
        unmapped = [v for v in self.values if not v.no_category]
        if unmapped:
            parts.append(
                f"{sum(v.count for v in unmapped)} in-scope active record(s) carry 户口性质 values"
                f" that the profile's code table does not map ({_listed(unmapped)}); add them to a"
                " profile file"
            )
        no_category = [v for v in self.values if v.no_category]
        if no_category:
            parts.append(
                f"{sum(v.count for v in no_category)} record(s) to convert carry codes that name no"
                f" 户别 ({_listed(no_category)}) and the register has no 户别 column, so the"
                " resident code to write is unknown; give those codes a category in a profile"
                " file, or correct the records"
            )
        return f"{head}: " + "; ".join(parts)


def _listed(values: Sequence[UnmappedValue]) -> str:
    return ", ".join(
        f"{'(empty)' if v.raw_code is None else repr(v.raw_code)}: {v.count}" for v in values
    )


class LockHeldError(HukouError):
    """Another live run holds the database's cutover lock."""

    exit_code = 7

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"another live run holds the cutover lock of this database: {holder}")


class RunMismatchError(HukouError):
    """A run is unfinished, and this command would continue it with different parameters."""

    exit_code = 8


class VerificationFailed(HukouError):
    """verify found discrepancies; the first ones are listed."""

    exit_code = 9

    def __init__(self, run_id: str, discrepancies: Sequence[str]) -> None:
        self.run_id = run_id
        self.discrepancies = list(discrepancies)
        super().__init__(self.message())

    def message(self) -> str:
        shown = "\n  ".join(self.discrepancies[:20])
        more = len(self.discrepancies) - 20
        tail = f"\n  … and {more} more" if more > 0 else ""
        return f"run {self.run_id} does NOT verify ({len(self.discrepancies)} discrepancies):\n  {shown}{tail}"


class DatabaseError(HukouError):
    """The database could not be reached or refused a statement (password and values hidden)."""

    exit_code = 10


class PlanMismatchError(HukouError):
    """The register or the parameters differ from the rehearsal's plan; nothing was written."""

    exit_code = 12

    def __init__(self, plan_path: str, differences: Sequence[str], total: int) -> None:
        self.plan_path = plan_path
        self.differences = list(differences)
        self.total = total
        super().__init__(self.message())

    def message(self) -> str:
        shown = "\n  ".join(self.differences[:20])
        more = self.total - min(20, len(self.differences))
        tail = f"\n  … and {more} more" if more > 0 else ""
        return (
            f"the register or the parameters changed since the rehearsal ({self.plan_path}):"
            f" {self.total} difference(s); nothing was written. Rehearse again, or run with"
            f" --accept-changes to go ahead\n  {shown}{tail}"
        )


class ChangedSinceCutoverError(HukouError):
    """A rollback would overwrite records changed after the cutover; nothing was restored."""

    exit_code = 13

    def __init__(self, run_id: str, record_keys: Sequence[int | str], shown: int) -> None:
        self.run_id = run_id
        self.record_keys = list(record_keys)
        super().__init__(
            f"rollback of run {run_id} refused: {len(self.record_keys)} record(s) changed after the"
            f" cutover would be overwritten (record keys: "
            f"{', '.join(str(k) for k in self.record_keys[:shown])}"
            f"{' …' if len(self.record_keys) > shown else ''}); nothing was restored."
            " Review them, or use --skip-changed to restore all others"
        )


class TooManyExceptionsError(HukouError):
    """--max-exceptions: the census before the real run found more exceptions than allowed."""

    exit_code = 14

    def __init__(self, found: int, allowed: int, by_code: dict[str, int]) -> None:
        self.found = found
        self.allowed = allowed
        self.by_code = dict(by_code)
        listed = ", ".join(
            f"{code} {n}" for code, n in sorted(by_code.items(), key=lambda kv: -kv[1])
        )
        super().__init__(
            f"cutover refused before writing anything: {found} exception(s) of severity error"
            f" where --max-exceptions allows {allowed} ({listed})"
        )


class PlanDifferedError(HukouError):
    """--expect: the run completed, but what it did differs from the rehearsal's plan."""

    exit_code = 15

    def __init__(self, run_id: str, differences: int) -> None:
        super().__init__(
            f"run {run_id} completed, but {differences} result(s) differ from the rehearsal's"
            " plan (listed above and in the workbook's 演练对比 sheet): review before sign-off"
        )


class Aborted(HukouError):
    """The operator did not confirm a destructive step."""

    exit_code = 11
