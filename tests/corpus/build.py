"""Build the bad-input corpus (``python tests/corpus/build.py``); the files are checked in.

Every file is small and deterministic. What each one must give is in ``tests/test_bad_input.py``.
ID numbers are made up, with valid check characters.
"""

from __future__ import annotations

import re
import zipfile
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from openpyxl import Workbook

HERE = Path(__file__).resolve().parent
HEADER = "公民身份号码,姓名,性别,出生日期,户号,户口性质,户别,行政区划代码,人员状态"
HEADER_COLUMNS = HEADER.split(",")


def _id(seq: int) -> str:
    first17 = f"33021119800101{seq:03d}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return (
        first17 + "10X98765432"[sum(int(c) * w for c, w in zip(first17, weights, strict=True)) % 11]
    )


def _row(seq: int, name: str = "张明", htype: str = "2", birth: str = "1980-01-01") -> list[str]:
    return [_id(seq), name, "男", birth, f"H{seq}", htype, "家庭户", "330211001001", "正常"]


def _csv(rows: list[list[str]], header: str = HEADER) -> str:
    return "\n".join([header, *(",".join(r) for r in rows)]) + "\n"


GOOD = _csv([_row(1), _row(3, "王芳"), _row(5, "𠀀明")])
GOOD_GBK = _csv([_row(1), _row(3, "王芳")])


def text_files() -> dict[str, bytes]:
    return {
        # accepted encodings, BOM or not
        "utf8.csv": GOOD.encode("utf-8"),
        "utf8_bom.csv": GOOD.encode("utf-8-sig"),
        "gbk.csv": GOOD_GBK.encode("gbk"),
        "gb18030.csv": GOOD.encode("gb18030"),
        "utf8_crlf_tab.csv": GOOD.replace(",", "\t").replace("\n", "\r\n").encode("utf-8"),
        # encodings it does not accept
        "utf16.csv": GOOD.encode("utf-16"),
        "big5_bytes.csv": GOOD_GBK.encode("utf-8") + b"\xff\xfe\xfd\n",
        # a UTF-8 export cut short in the middle of a character
        "truncated_utf8.csv": GOOD.encode("utf-8") + "1,张".encode()[:-1],
        # a multibyte character cut in the middle of a line (GBK lead byte, then a comma)
        "truncated_gbk_mid.csv": GOOD_GBK.encode("gbk") + b"\x81,x\n",
        "nul_bytes.csv": GOOD.encode("utf-8").replace(b"\xe7\x8e\x8b", b"\x00\x00"),
        "unbalanced_quotes.csv": _csv([_row(1), ['"' + _id(3), "王芳", "男"], _row(5)]).encode(
            "utf-8"
        ),
        "missing_column.csv": _csv(
            [r[:5] + r[6:] for r in [_row(1)]],
            ",".join(HEADER_COLUMNS[:5] + HEADER_COLUMNS[6:]),
        ).encode("utf-8"),
        "duplicate_header.csv": _csv([[*_row(1), _id(1)]], HEADER + ",身份证号").encode("utf-8"),
        "header_only.csv": (HEADER + "\n").encode("utf-8"),
        "empty.csv": b"",
        "binary.csv": bytes(range(256)) * 4,
        "zip_named.csv": b"PK\x03\x04" + bytes(60),
        "text_named.xlsx": GOOD.encode("utf-8"),
        "bad_rows.csv": _csv(
            [
                _row(1),
                _row(3, birth="1980-02-30"),
                _row(5, birth="01/02/1980"),
                [*_row(7)[:2], "X", *_row(7)[3:]],
                _row(9)[:4],
            ]
        ).encode("utf-8"),
    }


def _sheet(rows: list[list[object]]) -> Workbook:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(HEADER_COLUMNS)
    for r in rows:
        ws.append(r)
    return wb


def xlsx_files() -> dict[str, Workbook]:
    out: dict[str, Workbook] = {}
    # formulas: openpyxl stores no cached value, as a workbook never recalculated by Excel; the
    # one in CACHED is given the value Excel would have saved with it
    formula = _sheet([_row(1), _row(3), _row(5), _row(7), _row(9)])
    ws = formula.active
    assert ws is not None
    ws["B3"] = '=CONCATENATE("王","芳")'  # 姓名 (a required column): no cached value
    ws["F4"] = "=1+1"  # 户口性质 (a required column): no cached value
    ws["D5"] = "=DATE(1980,1,1)"  # 出生日期 (an optional column): no cached value
    ws["B6"] = '=CONCATENATE("王","芳")'  # 姓名: with its cached value
    out["formulas.xlsx"] = formula
    errors = _sheet([_row(1), _row(3), _row(5)])
    ws = errors.active
    assert ws is not None
    ws["F3"] = "#N/A"
    ws["H4"] = "#REF!"
    out["error_cells.xlsx"] = errors
    merged = _sheet([_row(1), _row(3), _row(5)])
    ws = merged.active
    assert ws is not None
    ws.merge_cells("E2:E4")  # one 户号 for the household, as people lay it out
    out["merged_cells.xlsx"] = merged
    dates = _sheet(
        [
            _row(1, birth="1980-01-01"),
            _row(3, birth="19800101"),
            _row(5, birth="1980/1/1"),
            _row(7, birth="1980年1月1日"),
            _row(9, birth="01/02/1980"),
        ]
    )
    out["dates_as_text.xlsx"] = dates
    return out


# file -> cell -> (type, value): the cached value of a formula cell, as Excel saves it
CACHED = {"formulas.xlsx": {"B6": ("str", "王芳")}}


def build() -> None:
    for name, data in text_files().items():
        (HERE / name).write_bytes(data)
    for name, wb in xlsx_files().items():
        wb.properties.created = wb.properties.modified = datetime(2016, 9, 30)
        wb.save(HERE / name)
        _normalise(HERE / name, CACHED.get(name, {}))


def _normalise(path: Path, cached: dict[str, tuple[str, str]]) -> None:
    """Fixed timestamps inside the ZIP, so that a rebuild gives the same bytes; cached values
    written into formula cells (openpyxl writes none)."""
    with zipfile.ZipFile(path) as src:
        items = [(i.filename, src.read(i)) for i in src.infolist()]
    for at, (name, data) in enumerate(items):
        if name != "xl/worksheets/sheet1.xml" or not cached:
            continue
        text = data.decode("utf-8")
        for ref, (kind, value) in cached.items():
            cell = re.search(
                rf'<c r="{ref}"><f>(.*?)</f><v\s*/>|<c r="{ref}"><f>(.*?)</f><v></v>', text
            )
            assert cell is not None, ref
            formula = cell[1] if cell[1] is not None else cell[2]
            text = text.replace(
                cell[0], f'<c r="{ref}" t="{kind}"><f>{formula}</f><v>{escape(value)}</v>'
            )
        items[at] = (name, text.encode("utf-8"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in items:
            dst.writestr(zipfile.ZipInfo(name, (2016, 9, 30, 0, 0, 0)), data)


if __name__ == "__main__":
    build()
