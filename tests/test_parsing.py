"""The parts a large CSV file is cut into for the parsing processes, and the COPY text they write."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hukou_convert import schema
from hukou_convert.fields import PERSON_FIELDS, Reject
from hukou_convert.parsing import Part, copy_text, cut_into_parts, start_of_line
from hukou_convert.readers import open_table
from hukou_convert.rowplan import RowPlan, _Slow
from hukou_convert.sample import PERSON_HEADER

# the bytes that matter to the cutting, and a character of several bytes in each encoding
_PIECES = st.sampled_from(["a", ",", '"', "\n", "\r", "\r\n", "中", "𠀀"])


def _lines_before(text: str, end: int) -> int:
    """Line breaks in the first ``end`` characters, as a file opened with newline="" reads."""
    return len(io.StringIO(text[:end], newline="").readlines()) if end else 0


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(_PIECES, max_size=120),
    part_bytes=st.integers(1, 24),
    encoding=st.sampled_from(["utf-8", "gb18030"]),
)
def test_parts_tile_the_file_each_ending_a_line_with_its_first_line_counted(
    pieces: list[str], part_bytes: int, encoding: str
) -> None:
    import tempfile

    text = "".join(pieces)
    data = text.encode(encoding)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.csv"
        path.write_bytes(data)
        parts = list(cut_into_parts(path, 0, 1, part_bytes))
        if not data:
            assert parts == []
            return
        assert parts[0].start == 0 and parts[-1].end == len(data)
        for before, after in itertools.pairwise(parts):
            assert before.end == after.start
            assert data[before.end - 1 : before.end] == b"\n"  # a part ends with a line
            # outside quotes if well formed, or a part grown long without a way out of them
            quotes = data[before.start : before.end].count(b'"')
            assert quotes % 2 == 0 or before.end - before.start >= 4 * part_bytes
        for part in parts:
            assert part.start < part.end
            prefix = data[: part.start].decode(encoding)
            assert part.first_line == 1 + _lines_before(prefix, len(prefix))
            # and each line of the part is found where it starts
            lines = io.StringIO(data[part.start : part.end].decode(encoding), newline="")
            offset = part.start
            for number, line in enumerate(lines.readlines(), start=part.first_line):
                assert start_of_line(path, part, number, block_bytes=part_bytes) == offset
                offset += len(line.encode(encoding))


def test_parts_cut_from_a_record_inside_the_file_count_from_its_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(b'h\r\n"a\nb"\n1\r2\n3\n')
    # the quote before the first cut is the record's own: counted from its start, not the file's
    assert list(cut_into_parts(path, 3, 2, 4)) == [Part(3, 9, 2), Part(9, 15, 4)]


def test_a_stray_quote_does_not_keep_the_rest_of_the_file_in_one_part(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    lines = [f"{n},name{n},address {n}\n" for n in range(2000)]
    lines[3] = '3,张"三,address 3\n'  # one quote: the count is odd from here on
    path.write_text("".join(lines), encoding="utf-8")
    parts = list(cut_into_parts(path, 0, 1, 1000))
    after = [p for p in parts if p.start > len("".join(lines[:4]).encode())]
    assert len(after) > 5
    assert all(p.end - p.start <= 5 * 1000 for p in parts)
    assert [p.first_line for p in parts] == [
        1 + "".join(lines).encode()[: p.start].count(b"\n") for p in parts
    ]


def test_copy_text_writes_plain_rows_as_they_are_and_escapes_the_rest() -> None:
    plain = [("330211", "", "甲"), ("x", "y", "")]
    assert copy_text(plain, 3) == "330211\t\t甲\nx\ty\t\n"
    special = [("a\\b", "\\N", "c"), ("t\tab", "new\nline", "c\rr")]
    assert copy_text(special, 3) == "a\\\\b\t\\\\N\tc\nt\\tab\tnew\\nline\tc\\rr\n"
    assert copy_text([], 3) == ""
    # a value that is not text (never from the import's rows): written as text, None as NULL
    assert copy_text([("a", None, 7)], 3) == "a\t\t7\n"  # type: ignore[list-item]


# cells as an export may hold them: values that COPY reads specially, spaces around a value,
# dates and codes good and bad, empty cells, a value too long for its column
_CELLS = st.sampled_from(
    [
        "",
        "  ",
        "330211003009",
        " 甲乙 ",
        "a\tb",
        "back\\slash",
        "line\nbreak",
        "carriage\rreturn",
        "\\N",
        "1980-02-29",
        "1981-02-29",
        "19900101",
        "2016-01-03 10:00:00",
        "男",
        "2",
        "x",
        "长" * 250,
        "33021119300101001X",
    ]
)
_WIDTH = len(PERSON_HEADER)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(_CELLS, min_size=_WIDTH - 1, max_size=_WIDTH + 1), max_size=10))
def test_rows_taken_as_copy_lines_are_the_lines_copy_text_writes_of_the_parsed_values(
    rows: list[list[str]],
) -> None:
    """The fast path of the COPY text (``RowPlan.copy_take``) writes a row exactly as the
    careful path's values are written by copy_text, and leaves to that path only the rows it
    must: a row refused or of the wrong width, or one whose values need escaping. Its lines are
    handed over (``flush``) each time they reach the chunk's size."""
    import csv
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.csv"
        with path.open("w", encoding="utf-8", newline="") as fh:
            csv.writer(fh).writerow(PERSON_HEADER)
        table = open_table(path)
    plan = RowPlan(table, PERSON_FIELDS, schema.register, {}, "")
    lines: list[str] = []
    sent: list[str] = []

    def flush() -> None:
        assert len(lines) == 3
        sent.extend(lines)
        lines.clear()

    take = plan.copy_take("7", lines, 3, flush)
    width = len(plan.columns) + 2
    fast = 0
    for line, cells in enumerate(rows, start=2):
        held = len(sent) + len(lines)
        taken = take(cells, line)
        written = sent + lines
        parsed = plan.parse(list(cells), line)
        values = None if isinstance(parsed, Reject) or parsed is None else (*parsed, "7", str(line))
        if taken:
            assert values is not None
            assert written[held:] == [copy_text([values], width)]
            fast += 1
            continue
        assert len(written) == held
        if values is not None and len(cells) == _WIDTH:
            try:
                plan._fast_row(list(cells))
            except _Slow:
                continue  # a row the careful path reads
            assert copy_text([values], width) != "\t".join(map(str, values)) + "\n"  # escaped
    assert len(lines) < 3 and len(sent) + len(lines) == fast
