"""Mapping files: names validated against an allowlist and the reflected schema, values sampled."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from hukou_convert.cli import cli
from hukou_convert.mapping import MappingError, check_mapping, load_mapping
from hukou_convert.profiles import load_profile

from .legacy import MAPPING, PROFILE_WITH_5, create_legacy


def test_mapping_check_samples_the_codes_present(engine: Engine, tmp_path: Path) -> None:
    mapping, profile_file = create_legacy(engine, tmp_path)
    reg = load_mapping(engine, mapping)
    assert reg.key_is_integer
    assert reg.table.c.hukou_type.name == "户口类别"  # our field name, their column
    report = check_mapping(engine, mapping, load_profile(str(profile_file)))
    assert report.records == 9
    codes = {raw: (n, what) for raw, n, what in report.codes}
    assert codes["2"] == (3, "convert") and codes["11"] == (1, "resident")
    assert codes["0"] == (1, "not_permanent")
    # code 5 (自理口粮) takes its 户别 from the household: this table has no 户别 column to give it
    assert codes["5"] == (1, "convert, but no 户别")
    assert report.unmapped == [("5", 1, True)]
    # the built-in zhenhai profile does not know this system's resident code 11
    plain = check_mapping(engine, mapping, load_profile("zhenhai"))
    assert ("11", 1, False) in plain.unmapped
    # the mapping says which status value means active, whatever the profile says
    assert {raw: active for raw, _, active in plain.statuses} == {"1": True, "2": False}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('table = "常住人口"', 'table = "常住人口; DROP TABLE x"'), "not an allowed name"),
        (('姓名"', '姓 名"'), "not an allowed name"),
        (('table = "常住人口"', 'table = "户籍人口"'), "no table"),
        (('name = "姓名"', 'name = "名字"'), "no such column"),
        (('key = "人员编号"', 'key = "户号"'), "not a single-column unique key"),
        (('status = "人员状态"\n', ""), "lacks required field(s) status"),
        (('resident_collective = "12"\n', ""), "needs both"),
        (("[values]", "[valuez]"), "unknown section"),
    ],
)
def test_bad_mappings_are_refused_before_any_sql_runs(
    change: tuple[str, str], message: str, sqlite_url: str, tmp_path: Path
) -> None:
    from hukou_convert.db import make_engine, parse_url

    engine = make_engine(parse_url(sqlite_url))
    mapping, _ = create_legacy(engine, tmp_path)
    assert change[0] in MAPPING
    mapping.write_text(MAPPING.replace(*change), encoding="utf-8")
    with pytest.raises(MappingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_mapping(engine, mapping)
    with engine.connect() as conn:  # nothing was dropped or changed
        assert conn.execute(text('SELECT COUNT(*) FROM "常住人口"')).scalar_one() == 9


def test_composite_key_is_refused_unless_a_single_unique_key_is_named(
    sqlite_url: str, tmp_path: Path
) -> None:
    from hukou_convert.db import make_engine, parse_url

    engine = make_engine(parse_url(sqlite_url))
    with engine.begin() as conn:
        conn.execute(
            text(
                'CREATE TABLE "人口" ("户号" TEXT, "序号" INTEGER, "公民身份号码" TEXT, "户口类别" TEXT,'
                ' "行政区划代码" TEXT, "人员状态" TEXT, PRIMARY KEY ("户号", "序号"))'
            )
        )
    mapping = tmp_path / "m.toml"
    body = MAPPING.replace('table = "常住人口"', 'table = "人口"').split("[columns]")[0]
    body = body.replace('key = "人员编号"', 'key = "户号"')
    body += (
        '[columns]\nid_number = "公民身份号码"\nhukou_type = "户口类别"\n'
        'division_code = "行政区划代码"\nstatus = "人员状态"\n'
        '[values]\nresident_family = "11"\nresident_collective = "12"\n'
    )
    mapping.write_text(body, encoding="utf-8")
    with pytest.raises(MappingError, match="composite key 户号, 序号"):
        load_mapping(engine, mapping)
    with engine.begin() as conn:
        conn.execute(text('ALTER TABLE "人口" ADD COLUMN "人员编号" TEXT'))
        conn.execute(text('CREATE UNIQUE INDEX ux_person ON "人口" ("人员编号")'))
    mapping.write_text(body.replace('key = "户号"', 'key = "人员编号"'), encoding="utf-8")
    reg = load_mapping(engine, mapping)
    assert reg.key_is_integer is False  # a text key


def test_mapping_check_command(db_url: str, tmp_path: Path) -> None:
    from hukou_convert.db import make_engine, parse_url

    engine = make_engine(parse_url(db_url))
    mapping, profile = create_legacy(engine, tmp_path)
    engine.dispose()
    runner = CliRunner()
    args = ["mapping", "check", "--mapping", str(mapping), "--db", db_url]
    no_category = runner.invoke(cli, [*args, "--profile", str(profile)])
    assert no_category.exit_code == 6
    assert "'5': 1" in no_category.stderr and "name no 户别" in no_category.stderr
    profile.write_text(PROFILE_WITH_5, encoding="utf-8")
    ok = runner.invoke(cli, [*args, "--profile", str(profile)])
    assert ok.exit_code == 0, ok.output
    assert "table 常住人口, key 人员编号 (integer)" in ok.stdout and "通过 PASSED" in ok.stdout
    unmapped = runner.invoke(cli, args)
    assert unmapped.exit_code == 6
    assert "'11': 1" in unmapped.stderr


def test_import_from_db_copies_the_legacy_table(db_url: str, tmp_path: Path) -> None:
    from sqlalchemy import select

    from hukou_convert import schema
    from hukou_convert.db import make_engine, parse_url

    source = make_engine(parse_url(db_url))
    mapping, profile = create_legacy(source, tmp_path)
    source.dispose()
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["import", "--from-db", db_url, "--mapping", str(mapping), "--db", copy, "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "persons: 9 loaded, 0 rejected from 常住人口" in result.stdout
    engine = make_engine(parse_url(copy))
    R = schema.register
    with engine.connect() as conn:
        rows = {
            r.name: r for r in conn.execute(select(R.c.name, R.c.hukou_type, R.c.status, R.c.sex))
        }
    assert (rows["旧系101"].hukou_type, rows["旧系101"].status, rows["旧系101"].sex) == (
        "1",
        "正常",
        "男",
    )
    assert rows["旧系107"].status == "2"  # not active: kept as it was
    again = runner.invoke(
        cli,
        ["import", "--from-db", db_url, "--mapping", str(mapping), "--db", copy, "--append"],
    )
    assert again.exit_code == 5 and "same SHA-256" in again.stderr
    rehearsal = runner.invoke(
        cli,
        ["cutover", "-p", str(profile), "--dry-run", "-q", "--out", str(tmp_path), "--db", copy],
    )
    assert rehearsal.exit_code == 0, rehearsal.output
    assert "to convert                          5" in rehearsal.stdout
    missing = runner.invoke(cli, ["import", "--from-db", db_url, "--db", copy])
    assert missing.exit_code == 2 and "--mapping" in missing.stderr
