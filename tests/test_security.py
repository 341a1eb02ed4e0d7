"""Prying eyes: no password and no ID number in any message, log line or error; passwords from a
file, a prompt or the environment; files with personal data created 0600; values from a profile file
travel as bound parameters, never as SQL text. (Table and column names from mapping files are
checked in test_mapping.py.)
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import exc, insert, select

from hukou_convert import schema
from hukou_convert.cli import cli
from hukou_convert.db import display_url, make_engine, parse_url, translate_errors
from hukou_convert.errors import DatabaseError
from hukou_convert.ingest import import_register

from .helpers import ident, table_dump

SECRET = "s3cret-Pw-9f2"
R = schema.register


def run(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _id_numbers(engine: object) -> list[str]:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return [n for n in conn.execute(select(R.c.id_number)).scalars() if n and len(n) >= 15]


def test_failing_commands_name_no_id_number(
    db_url: str, sample_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every way these commands fail, on a register full of ID numbers: stdout, stderr and the
    SQLAlchemy log at INFO (statements and their parameters, as echo=True would show) hold none."""
    caplog.set_level(logging.INFO, logger="sqlalchemy")
    db = ["--db", db_url]
    assert run("import", str(sample_csv), "-q", *db)[0] == 0
    engine = make_engine(parse_url(db_url))
    numbers = _id_numbers(engine)
    assert len(numbers) > 300
    unmapped = tmp_path / "odd.toml"
    unmapped.write_text('base = "zhenhai"\nbuiltin_codes = false\n', encoding="utf-8")
    failing = [
        (["import", str(sample_csv), "-q"], 5),
        (["import", str(sample_csv), "--append", "-q"], 5),
        (["verify"], 5),
        (["rollback", "--run", "R-none", "--yes"], 5),
        (["cutover", "-p", str(unmapped), "--yes", "-q"], 6),
        (["cutover", "-p", "zhenhai", "--max-exceptions", "0", "--yes", "-q"], 14),
        (["cutover", "-p", "zhenhai", "-q"], 11),
    ]
    seen = ""
    for args, code in failing:
        got, out, err = run(*args, *db)
        assert got == code, (args, out, err)
        assert "Traceback" not in err
        seen += out + err
    assert run("cutover", "-p", "zhenhai", "--yes", "-q", "--out", "r", *db)[0] == 0
    with engine.begin() as conn:  # a record changed after the cutover: rollback and verify refuse
        first = conn.execute(select(schema.history.c.record_id).limit(1)).scalar_one()
        conn.execute(R.update().where(R.c.record_id == first).values(hukou_type="2"))
    run_id = str(engine.connect().execute(select(schema.runs.c.run_id)).scalar_one())
    for args, code in [(["verify"], 9), (["rollback", "--run", run_id, "--yes"], 13)]:
        got, out, err = run(*args, *db)
        assert got == code, (args, out, err)
        seen += out + err
    logged = caplog.text
    for number in numbers:
        assert number not in seen
        assert number not in logged
    engine.dispose()


def test_database_errors_hide_bound_values(engine: object, sample_csv: Path) -> None:
    """hide_parameters=True: a statement refused with an ID number among its parameters names
    neither the value in the exception nor in the message the operator sees."""
    import_register(engine, sample_csv)  # type: ignore[arg-type]
    secret_id = ident("330211", "19991231", 777)
    with pytest.raises(exc.IntegrityError) as raised, engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(insert(R).values(record_id=1, id_number=secret_id, name="重复"))
    assert secret_id not in str(raised.value)
    assert "SQL parameters hidden due to hide_parameters=True" in str(raised.value)
    with (
        pytest.raises(DatabaseError) as translated,
        translate_errors(),
        engine.begin() as conn,  # type: ignore[attr-defined]
    ):
        conn.execute(insert(R).values(record_id=1, id_number=secret_id, name="重复"))
    assert secret_id not in translated.value.message()
    assert translated.value.exit_code == 10


def test_password_from_the_environment_or_a_file_is_used_and_never_shown(
    tmp_path: Path, sample_csv: Path
) -> None:
    """Against the real PostgreSQL (trust authentication accepts any password, so the proof that it
    was passed is the URL the engine was built with)."""
    from .conftest import _fresh_database

    databases = _fresh_database("postgresql", tmp_path)
    url = next(databases)
    try:
        assert parse_url(url).password is None
        assert parse_url(url, SECRET).password == SECRET
        env_url = parse_url(url) if "HUKOU_DB_PASSWORD" in os.environ else None
        assert env_url is None
        os.environ["HUKOU_DB_PASSWORD"] = SECRET
        try:
            assert parse_url(url).password == SECRET
        finally:
            del os.environ["HUKOU_DB_PASSWORD"]
        assert SECRET not in display_url(parse_url(url, SECRET))

        code, _, err = run(
            "import", str(sample_csv), "-q", "--db", url, env={"HUKOU_DB_PASSWORD": SECRET}
        )
        assert code == 0, err
        secret_file = tmp_path / "pw"
        secret_file.write_text(SECRET + "\n", encoding="utf-8")
        secret_file.chmod(0o600)
        out_dir = tmp_path / "reports"

        def rehearse_with(out: Path, *password: str, input: str | None = None) -> str:
            """A rehearsal given the password one way; its stderr."""
            dry_run = ("cutover", "-p", "zhenhai", "--dry-run", "-q", "--out", str(out))
            code, stdout, stderr = run(*dry_run, "--db", url, *password, input=input)
            assert code == 0, stderr
            assert "postgres:***@" in stdout  # the database line shows a password was given
            assert SECRET not in stdout + stderr
            return stderr

        rehearse_with(out_dir, "--db-password-file", str(secret_file))
        err = rehearse_with(tmp_path / "prompted", "--db-password-prompt", input=SECRET + "\n")
        assert "Database password" in err  # asked on the terminal, the answer not echoed
        for written in out_dir.iterdir():
            if written.suffix == ".json":
                assert SECRET not in written.read_text(encoding="utf-8")
    finally:
        next(databases, None)


def test_legacy_database_password_from_a_prompt_is_never_shown(tmp_path: Path) -> None:
    code, out, err = run(
        "import",
        "--from-db",
        "postgresql://postgres@127.0.0.1:1/nothing",
        "--mapping",
        str(tmp_path / "unused.toml"),
        "--from-db-password-prompt",
        "--db",
        f"sqlite:///{tmp_path / 'copy.db'}",
        input=SECRET + "\n",
    )
    assert "Legacy database password" in err
    assert code != 0 and SECRET not in out + err


def test_files_with_personal_data_are_0600(
    sqlite_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    db = ["--db", sqlite_url]
    rejects = tmp_path / "rejects.csv"
    assert run("import", str(sample_csv), "-q", "--rejects", str(rejects), *db)[0] == 0
    out_dir = tmp_path / "reports"
    assert run("cutover", "-p", "zhenhai", "--dry-run", "-q", "--out", str(out_dir), *db)[0] == 0
    assert run("cutover", "-p", "zhenhai", "--yes", "-q", "--out", str(out_dir), *db)[0] == 0
    written = sorted(out_dir.iterdir())
    suffixes = {p.suffix for p in written}
    assert {".xlsx", ".json", ".gz", ".sha256"} <= suffixes, written
    for path in [rejects, *written]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert not [p for p in written if p.name.startswith(".")]  # no temporary file left
    plan = next(p for p in written if p.suffix == ".json")
    number = ident("330211", "20000101", 22)
    assert number not in plan.read_text(encoding="utf-8")  # the plan holds digests, not IDs
    json.loads(plan.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "scope",
    ["3302' OR '1'='1", "3302%", "33_2", "3302; DROP TABLE hukou_register", "", "1"],
)
def test_malicious_scope_in_a_profile_file_is_refused(
    scope: str, sqlite_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    run("import", str(sample_csv), "-q", "--db", sqlite_url)
    engine = make_engine(parse_url(sqlite_url))
    before = table_dump(engine)
    profile = tmp_path / "evil.toml"
    profile.write_text(f'base = "zhenhai"\nscope = [{json.dumps(scope)}]\n', encoding="utf-8")
    code, out, err = run("cutover", "-p", str(profile), "--dry-run", "--db", sqlite_url)
    assert code == 4, (out, err)
    assert "scope" in err and "Traceback" not in err
    assert table_dump(engine) == before
    engine.dispose()


@pytest.mark.parametrize("scope", ["330211\n", "３３０２１１"])
def test_scope_prefix_is_ascii_digits_only(
    scope: str, sqlite_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    run("import", str(sample_csv), "-q", "--db", sqlite_url)
    profile = tmp_path / "odd.toml"
    profile.write_text(f'base = "zhenhai"\nscope = [{json.dumps(scope)}]\n', encoding="utf-8")
    code, _, err = run("cutover", "-p", str(profile), "--dry-run", "--db", sqlite_url)
    assert code == 4, err


def test_profile_values_travel_as_bound_parameters(
    db_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    """A status written as an injection is just a status no record has: nobody is active."""
    run("import", str(sample_csv), "-q", "--db", db_url)
    engine = make_engine(parse_url(db_url))
    before = table_dump(engine)
    profile = tmp_path / "statuses.toml"
    profile.write_text(
        'base = "zhenhai"\nactive_statuses = ["正常\' OR \'1\'=\'1", "x\\") OR 1=1 --"]\n',
        encoding="utf-8",
    )
    code, out, err = run(
        "cutover", "-p", str(profile), "--dry-run", "-q", "--out", "r", "--db", db_url
    )
    assert code == 0, err
    active = next(line for line in out.splitlines() if "in scope, active" in line)
    assert active.split()[-1] == "0"
    assert table_dump(engine) == before
    engine.dispose()


def test_rehearsal_with_an_empty_code_table_lists_the_unmapped_codes(
    sqlite_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    run("import", str(sample_csv), "-q", "--db", sqlite_url)
    profile = tmp_path / "empty.toml"
    profile.write_text('base = "zhenhai"\nbuiltin_codes = false\n', encoding="utf-8")
    code, _, err = run(
        "cutover", "-p", str(profile), "--dry-run", "-q", "--out", "r", "--db", sqlite_url
    )
    assert code == 6, err


def test_driver_messages_quoting_a_value_are_scrubbed(db_url: str) -> None:
    """MySQL quotes the offending value in its message (Duplicate entry '…'): a legacy table with
    a unique ID column would put an ID number into the one line the operator sees."""
    from sqlalchemy import text

    from hukou_convert.db import make_engine, parse_url

    engine = make_engine(parse_url(db_url))
    secret = ident("330211", "19991231", 779)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE leak_probe (id_number VARCHAR(20) UNIQUE)"))
        conn.execute(text("INSERT INTO leak_probe VALUES (:v)"), {"v": secret})
    with pytest.raises(DatabaseError) as err, translate_errors(), engine.begin() as conn:
        conn.execute(text("INSERT INTO leak_probe VALUES (:v)"), {"v": secret})
    assert secret not in err.value.message()
    assert secret[:10] not in err.value.message()
    engine.dispose()
