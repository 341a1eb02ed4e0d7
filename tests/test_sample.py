"""The synthetic register: every ID number unique and valid, agreeing with the person's sex and
birth date, however many persons (made without remembering those already made)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from hukou_convert.cli import cli
from hukou_convert.db import make_engine, parse_url
from hukou_convert.idnumbers import has_valid_check
from hukou_convert.ingest import import_register
from hukou_convert.sample import _BIRTH_DAYS, MAX_SAMPLE_PERSONS, SampleOptions, generate_persons


def test_id_numbers_are_unique_valid_and_agree_with_sex_and_birth() -> None:
    persons = 2 * _BIRTH_DAYS + 1_000  # across three blocks of birth days
    seen: set[str] = set()
    for p in generate_persons(SampleOptions(("330211",), persons, seed=3)):
        number = p["公民身份号码"]
        assert number not in seen
        seen.add(number)
        assert has_valid_check(number)
        assert number[6:14] == p["出生日期"].replace("-", "")
        assert (int(number[16]) % 2 == 1) == (p["性别"] == "男")  # GB 11643: odd for men
        assert number[14:17] != "000"
        assert p["行政区划代码"].startswith("330211")
    assert len(seen) == persons


def test_sample_command_writes_a_register_that_imports_whole(tmp_path: Path) -> None:
    out = tmp_path / "register.csv"
    runner = CliRunner()
    result = runner.invoke(cli, ["sample", "-p", "wenzhou", "--persons", "500", "--out", str(out)])
    assert result.exit_code == 0, result.output
    loaded = import_register(make_engine(parse_url(f"sqlite:///{tmp_path / 'h.db'}")), out)
    assert (loaded.loaded, loaded.rejected) == (500, 0)
    too_many = runner.invoke(
        cli, ["sample", "-p", "zhenhai", "--persons", str(MAX_SAMPLE_PERSONS + 1), "--out", "x"]
    )
    assert too_many.exit_code == 2 and "--persons" in too_many.output
