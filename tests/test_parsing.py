"""The parts a large CSV file is cut into for the parsing processes, and the COPY text they write."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hukou_convert.parsing import Part, copy_text, cut_into_parts, start_of_line

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
