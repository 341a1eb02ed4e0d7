"""The parts a large CSV file is cut into for the parsing processes, and the COPY text they write."""

from __future__ import annotations

import csv
import io
import itertools
import marshal
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from hukou_convert import schema
from hukou_convert.fields import PERSON_FIELDS, Reject
from hukou_convert.parsing import (
    ParsingProcesses,
    Part,
    _CopyText,
    _parse_part,
    copy_text,
    cut_into_parts,
    start_of_line,
)
from hukou_convert.readers import open_table
from hukou_convert.rowplan import RowPlan, _Slow
from hukou_convert.sample import PERSON_HEADER, person_row

# the bytes that matter to the cutting, and a character of several bytes in each encoding
_PIECES = st.sampled_from(["a", ",", '"', "\n", "\r", "\r\n", "中", "𠀀", "\\", "\t", "\0"])


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
            # plain: nothing a line split at its commas would misread, or COPY would escape
            held = data[part.start : part.end]
            assert part.plain == all(b not in held for b in (b'"', b"\\", b"\t", b"\0"))
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
    assert list(cut_into_parts(path, 3, 2, 4)) == [Part(3, 9, 2), Part(9, 15, 4, plain=True)]


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
_CELL_TEXTS = [
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
_CELLS = st.sampled_from(_CELL_TEXTS)
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


# cells a plain part may hold (no quote, backslash, tab or NUL; a comma splits a cell in two)
_PLAIN_CELLS = st.sampled_from(
    [c for c in _CELL_TEXTS if not any(x in c for x in "\t\\\n\r")] + ["a,b", " ", "　甲　"]
)


class _Out:
    """The pipe a parsing process writes to: its messages, unmarshalled, each chunk's COPY text
    (sent after it as bytes of its own) in its place."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self._text_next = False

    def send_bytes(self, data: bytes) -> None:
        if self._text_next:
            message = self.messages.pop()
            self.messages.append((*message[:2], data, *message[3:]))
            self._text_next = False
            return
        message = marshal.loads(data)
        self.messages.append(message)
        self._text_next = message[0] == "rows" and message[2] is None

    def text(self) -> bytes:
        return b"".join(m[2] for m in self.messages)

    def rejects(self) -> list[Any]:
        return [r for m in self.messages for r in m[4]]


_GOOD_ROW = [
    person_row("330211198001010017", "2", address="骆驼街道锦华社区112号").get(h, "")
    for h in PERSON_HEADER
]


def _changed(cells: list[str], at: int, cell: str) -> list[str]:
    return [*cells[:at], cell, *cells[at + 1 :]]


# a good row as it is or with one cell changed, rows of blank cells, rows of any plain cells
_PLAIN_ROWS = st.one_of(
    st.just(_GOOD_ROW),
    st.builds(_changed, st.just(_GOOD_ROW), st.integers(0, _WIDTH - 1), _PLAIN_CELLS),
    st.lists(st.sampled_from(["", " ", "　"]), min_size=_WIDTH, max_size=_WIDTH),
    st.lists(_PLAIN_CELLS, max_size=_WIDTH + 1),
)


@settings(max_examples=300, deadline=None)
@given(
    records=st.lists(
        st.tuples(_PLAIN_ROWS, st.sampled_from(["\n", "\r\n", "\r"])),
        max_size=12,
    ),
    last_ended=st.booleans(),
    delimiter=st.sampled_from([",", "\t"]),
)
def test_a_plain_part_is_written_line_by_line_as_the_csv_reader_would_read_it(
    records: list[tuple[list[str], str]], last_ended: bool, delimiter: str
) -> None:
    """A plain part (no quote, backslash, NUL, or tab but as the delimiter) is written a line at a
    time by the row plan's copy_lines, each line it does not take read by the CSV reader: the
    same COPY text and the same rejects, with their lines and original text, as the part read by
    the CSV reader throughout; blank lines and lines of blank cells skipped, rows of the wrong
    width, refused values, values too long and a last line without its line break among them."""
    import tempfile

    body = "".join(delimiter.join(cells) + end for cells, end in records)
    if records and not last_ended:
        body = body[: -len(records[-1][1])]
    data = (delimiter.join(PERSON_HEADER) + "\n" + body).encode("utf-8")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.csv"
        path.write_bytes(data)
        table = open_table(path)
        assert table.delimiter == delimiter
        plan = RowPlan(table, PERSON_FIELDS, schema.register, {}, "")
        as_text = _CopyText(len(plan.columns) + 2, "utf-8")
        outs = []
        for plain in (True, False):
            out = _Out()
            with path.open("rb") as fh:
                assert _parse_part(table, plan, 7, as_text, fh, Part(0, len(data), 1, plain), out)
            outs.append(out)
    lines, careful = outs
    assert lines.text() == careful.text()
    assert lines.rejects() == careful.rejects()
    assert lines.messages[-1][6] and sum(m[5] for m in lines.messages) == len(data)


def test_copy_lines_takes_the_good_lines_and_leaves_the_others_to_parse(tmp_path: Path) -> None:
    """The lines copy_lines takes are not parsed one by one: of a plain part of good rows, a
    refused one, one of the wrong width, one whose first cell is blank and a blank one, only the
    first three reach RowPlan.parse (the blank line is skipped), and every row is written as
    parse would write it."""
    from tests.helpers import ident, person

    def line(seq: int, **fields: str) -> str:
        values = person(ident("330211", "19800101", seq), "2", **fields)
        return ",".join(values.get(h, "") for h in PERSON_HEADER)

    lines = [",".join(PERSON_HEADER)] + [line(seq) for seq in range(1, 30)]
    lines[5] = line(5, birth="1981-02-29")  # refused
    lines[9] = line(9) + ",extra"  # the wrong width, its extra cell not blank
    lines[12] = ""  # blank
    lines[15] = "  " + line(15)[18:]  # no ID number: left to parse (the checks report it)
    lines[20] = " " + line(20)  # a space before the ID number: taken all the same
    data = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    path = tmp_path / "r.csv"
    path.write_bytes(data)
    table = open_table(path)
    plan = RowPlan(table, PERSON_FIELDS, schema.register, {}, "")
    parsed: list[int] = []
    careful = plan.parse

    def counted(cells: list[Any], line: int = 0, formulas: Any = ()) -> Any:
        parsed.append(line)
        return careful(cells, line, formulas)

    plan.parse = counted  # type: ignore[method-assign]
    out = _Out()
    with path.open("rb") as fh:
        part = Part(0, len(data), 1, plain=True)
        _parse_part(table, plan, 7, _CopyText(len(plan.columns) + 2, "utf-8"), fh, part, out)
    assert parsed == [6, 10, 16]  # the blank line skipped without parsing; the space taken
    assert [(r[0], r[2]) for r in out.rejects()] == [(6, "D (出生日期)"), (10, None)]
    written = out.text().decode("utf-8").splitlines()
    assert len(written) == 29 - 3
    for number in (2, 16, 21, 30):
        values = careful(next(csv.reader([lines[number - 1]])), number)
        assert isinstance(values, tuple)
        assert copy_text([(*values, "7", str(number))], len(plan.columns) + 2).rstrip("\n") in (
            written
        )


def test_a_line_longer_than_the_csv_field_limit_is_left_to_the_csv_reader(tmp_path: Path) -> None:
    """A column the import does not read (here 备注) holding more than the CSV reader's limit for
    a field: the reader refuses the record, and so does a plain part, which leaves such a line
    to it; the line before and after it are loaded either way."""
    from tests.helpers import ident, person

    header = [*PERSON_HEADER, "备注"]
    rows = [[*person(ident("330211", "19800101", n), "2").values(), "短"] for n in (1, 2, 3)]
    rows[1][-1] = "长" * (csv.field_size_limit() + 1)
    data = "\n".join(",".join(cells) for cells in [header, *rows]).encode("utf-8") + b"\n"
    path = tmp_path / "r.csv"
    path.write_bytes(data)
    table = open_table(path)
    plan = RowPlan(table, PERSON_FIELDS, schema.register, {}, "")
    outs = []
    for plain in (True, False):
        out = _Out()
        with path.open("rb") as fh:
            part = Part(0, len(data), 1, plain)
            _parse_part(table, plan, 7, _CopyText(len(plan.columns) + 2, "utf-8"), fh, part, out)
        outs.append(out)
    assert outs[0].text() == outs[1].text() and outs[0].text().count(b"\n") == 2
    assert outs[0].rejects() == outs[1].rejects()
    assert [(r[0], r[3]) for r in outs[0].rejects()] == [
        (
            3,
            f"cannot be split into fields: field larger than field limit ({csv.field_size_limit()})",
        )
    ]


def test_copy_text_crosses_from_the_parsing_processes_as_bytes_or_as_the_text_it_cannot_encode(
    tmp_path: Path,
) -> None:
    """The parsing processes hand each chunk's COPY text over encoded in the client encoding, as
    bytes of its own after the chunk's message; a chunk holding a value that encoding cannot hold
    crosses as text, for the driver to name the problem. Either way the rows are those written in
    the file's order."""
    path = tmp_path / "register.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(PERSON_HEADER)
        for n in range(40):
            name = "𠀀明" if n == 25 else f"丁{n}"  # a character GBK has no code for
            row = person_row(f"33021119800101{n:03d}7", "2", name=name, household=f"H{n}")
            writer.writerow([row.get(h, "") for h in PERSON_HEADER])
    table = open_table(path)

    def texts(encoding: str) -> list[bytes | str]:
        with ParsingProcesses(
            table, "persons", "postgresql+psycopg", 7, copy_encoding=encoding
        ) as p:
            p._part_bytes = 300  # parts of a few rows each, to both processes
            return [chunk.text for chunk in p.chunks() if chunk.count]

    in_gbk, in_utf8 = texts("gbk"), texts("utf-8")
    assert all(isinstance(text, bytes) for text in in_utf8)
    assert [isinstance(text, str) for text in in_gbk].count(True) == 1
    as_gbk = "".join(t if isinstance(t, str) else t.decode("gbk") for t in in_gbk)
    assert as_gbk == b"".join(cast("list[bytes]", in_utf8)).decode("utf-8")
    lines = as_gbk.splitlines()
    assert [line.split("\t")[-1] for line in lines] == [str(n) for n in range(2, 42)]
    assert "𠀀明" in lines[25]
