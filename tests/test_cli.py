"""The command line through click's CliRunner: the README flow, help texts and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from hukou_convert import schema
from hukou_convert.cli import cli
from hukou_convert.db import make_engine, parse_url

from .conftest import SAMPLE
from .helpers import ident, person, table_dump, write_register


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_every_command_has_help_text() -> None:
    assert cli.commands
    for name, command in cli.commands.items():
        code, out, _ = run(name, "--help")
        assert code == 0, name
        assert command.help and len(command.help.strip()) > 20, name
        assert "Usage:" in out


def test_rehearsal_cutover_verify_lookup(db_url: str, sample_csv: Path) -> None:
    db = ["--db", db_url]
    code, out, _ = run(
        "import", str(sample_csv), "--applications", str(SAMPLE / "zhenhai_applications.csv"), *db
    )
    assert code == 0, out
    assert "persons: 328 loaded, 3 rejected" in out
    assert "applications: 6 loaded, 0 rejected" in out

    code, out, _ = run("cutover", "-p", "zhenhai", "--dry-run", "-q", *db)
    assert code == 0
    assert "演练 REHEARSAL" in out and "nothing was written" in out
    predicted = _count_line(out, "to convert")

    code, out, err = run("cutover", "-p", "zhenhai", "-q", *db, input="n\n")
    assert code == 11
    assert "not confirmed" in err

    code, out, _ = run("cutover", "-p", "zhenhai", "-q", *db, input="y\n")
    assert code == 0, out
    assert "正式 CUTOVER run R" in out and "completed" in out
    assert _count_line(out, "converted") == predicted

    code, out, _ = run("cutover", "-p", "zhenhai", "--yes", "-q", *db)
    assert code == 0 and "already complete: nothing to do" in out

    code, out, _ = run("verify", *db)
    assert code == 0 and "通过 PASSED" in out and "[FAIL]" not in out

    collective = ident("330211", "20000101", 22)  # 集体丙 in the sample, code 4
    code, out, _ = run("lookup", collective, "--format", "json", *db)
    assert code == 0
    [entry] = json.loads(out)
    assert entry["original_type"] == "农业集体户口" and entry["original_code"] == "4"
    assert entry["category"] == "集体户"
    assert entry["name"] == "集**"
    assert entry["effective_at"] == "2016-10-01T00:00:00+08:00"
    code, out, _ = run("lookup", collective, "--unmasked", *db)
    assert "集体丙" in out


def _count_line(out: str, label: str) -> int:
    for line in out.splitlines():
        if line.strip().startswith(label):
            return int(line.split()[-1])
    raise AssertionError(f"no line {label!r} in {out}")


def test_profiles_lists_the_five_jurisdictions() -> None:
    code, out, _ = run("profiles")
    assert code == 0
    for name, scope in [
        ("zhenhai", "330211"),
        ("wenzhou", "3303"),
        ("hangzhou", "3301"),
        ("panjin", "2111"),
        ("ankang", "6109"),
    ]:
        assert name in out and scope in out
    code, out, _ = run("profiles", "--show", "zhenhai")
    assert "2016-10-01T00:00:00+08:00" in out and "蓝印户口" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["cutover", "-p", "nowhere", "--dry-run"], 4, "unknown profile"),
        (["cutover", "-p", "panjin", "--dry-run"], 4, "gives no cutover date"),
        (["cutover", "-p", "hangzhou", "--cutoff", "2017-01-02 00:00", "--dry-run"], 4, "deadline"),
        (["cutover", "-p", "zhenhai", "--cutoff", "2016-10-02 00:00", "--dry-run"], 4, "fixes"),
        (["cutover", "-p", "ankang", "--cutoff", "2016-12-31", "--dry-run"], 4, "without a time"),
        (["cutover", "-p", "zhenhai", "--dry-run"], 5, "import"),
        (["verify"], 5, "no cutover has run"),
        (["import", "missing.csv"], 3, "file not found"),
    ],
)
def test_exit_codes(args: list[str], code: int, message: str, sqlite_url: str) -> None:
    got, _, err = run(*args, "--db", sqlite_url)
    assert got == code
    assert message in err
    assert "Traceback" not in err


def test_unmapped_codes_exit_6_in_rehearsal_and_real_run(sqlite_url: str, tmp_path: Path) -> None:
    rows = [person(ident("330211", "19800101", 1), "99")]
    db = ["--db", sqlite_url]
    assert run("import", str(write_register(tmp_path / "r.csv", rows)), *db)[0] == 0
    code, out, err = run("cutover", "-p", "zhenhai", "--dry-run", *db)
    assert code == 6 and "UNMAPPED '99': 1" in out and "would refuse" in err
    code, _, err = run("cutover", "-p", "zhenhai", "--yes", *db)
    assert code == 6 and "refused before writing anything" in err


def test_import_twice_exit_5(sqlite_url: str, sample_csv: Path) -> None:
    assert run("import", str(sample_csv), "--db", sqlite_url)[0] == 0
    code, _, err = run("import", str(sample_csv), "--db", sqlite_url)
    assert code == 5 and "would double it" in err


def test_resume_with_other_parameters_exit_8(sqlite_url: str, sample_csv: Path) -> None:
    engine = make_engine(parse_url(sqlite_url))
    run("import", str(sample_csv), "--db", sqlite_url)
    # an unfinished run of zhenhai, as a killed process leaves it
    from .helpers import record_unfinished_run

    record_unfinished_run(engine, "R-unfinished")
    code, _, err = run(
        "cutover",
        "-p",
        "zhenhai",
        "--cutoff",
        "2016-10-02 00:00",
        "--force-cutoff",
        "--yes",
        "--db",
        sqlite_url,
    )
    assert code == 8 and "R-unfinished is unfinished" in err


def test_verify_fails_with_exit_9_when_the_register_was_changed(
    sqlite_url: str, sample_csv: Path
) -> None:
    db = ["--db", sqlite_url]
    run("import", str(sample_csv), *db)
    assert run("cutover", "-p", "zhenhai", "--yes", "-q", *db)[0] == 0
    engine = make_engine(parse_url(sqlite_url))
    H, R = schema.history, schema.register
    with engine.begin() as conn:
        record = conn.execute(H.select().limit(1)).first()
        assert record is not None
        conn.execute(update(R).where(R.c.record_id == record.record_id).values(hukou_type="2"))
    code, out, err = run("verify", *db)
    assert code == 9
    assert "[FAIL] converted records are 居民户口" in out
    assert "does NOT verify" in err
    assert record.id_number not in out + err  # discrepancies name record keys, never ID numbers


def test_database_errors_exit_10_without_the_password() -> None:
    url = "postgresql://postgres:s3cret-pw@127.0.0.1:1/nothing"
    code, out, err = run("cutover", "-p", "zhenhai", "--dry-run", "--db", url)
    assert code == 10
    assert "s3cret-pw" not in out + err
    assert "Traceback" not in err


def test_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-pw\n")
    code, out, err = run(
        "verify",
        "--db",
        "postgresql://postgres@127.0.0.1:1/nothing",
        "--db-password-file",
        str(secret),
    )
    assert code == 10 and "s3cret-pw" not in out + err


def test_rehearsal_leaves_the_database_untouched(db_url: str, sample_csv: Path) -> None:
    run("import", str(sample_csv), "--db", db_url)
    engine = make_engine(parse_url(db_url))
    before = table_dump(engine)
    assert run("cutover", "-p", "zhenhai", "--dry-run", "-q", "--db", db_url)[0] == 0
    assert table_dump(engine) == before
    engine.dispose()


def test_rehearsal_plan_then_cutover_expect(db_url: str, sample_csv: Path, tmp_path: Path) -> None:
    db = ["--db", db_url]
    reports = tmp_path / "reports"
    run("import", str(sample_csv), *db)
    code, out, _ = run("cutover", "-p", "zhenhai", "--dry-run", "-q", "--out", str(reports), *db)
    assert code == 0
    [plan] = list(reports.glob("hukou-plan-zhenhai-*.json"))
    assert f"plan for the real run: {plan}" in out

    engine = make_engine(parse_url(db_url))
    with engine.begin() as conn:
        conn.execute(
            update(schema.register).where(schema.register.c.record_id == 5).values(name="改名")
        )
    engine.dispose()
    code, out, err = run("cutover", "-p", "zhenhai", "--yes", "-q", "--expect", str(plan), *db)
    assert code == 12
    assert "record 5: changed since" in err and "nothing was written" in err

    code, out, _ = run(
        "cutover",
        "-p",
        "zhenhai",
        "--yes",
        "-q",
        "--expect",
        str(plan),
        "--accept-changes",
        "--out",
        str(reports),
        *db,
    )
    assert code == 0, out
    assert "DIFFERS" in out and "records changed since the rehearsal: 1" in out


def test_max_exceptions_refuses_the_real_run(sqlite_url: str, sample_csv: Path) -> None:
    db = ["--db", sqlite_url]
    run("import", str(sample_csv), *db)
    engine = make_engine(parse_url(sqlite_url))
    before = table_dump(engine)
    code, _, err = run("cutover", "-p", "zhenhai", "--yes", "-q", "--max-exceptions", "0", *db)
    assert code == 14
    assert "WRONG_CHECK_DIGIT 1" in err and "DUPLICATE_ID_NUMBER 2" in err
    assert table_dump(engine) == before
    code, _, _ = run("cutover", "-p", "zhenhai", "--yes", "-q", "--max-exceptions", "50", *db)
    assert code == 0
    code, _, err = run("cutover", "-p", "zhenhai", "--dry-run", "--max-exceptions", "5", *db)
    assert code == 2 and "for the real run" in err
