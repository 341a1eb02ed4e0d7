"""The rollback workbook: every restored record and every skipped one, masked, on three databases."""

from __future__ import annotations

from pathlib import Path

import openpyxl
from click.testing import CliRunner
from sqlalchemy import Engine, select, update

from hukou_convert import schema, xlsx
from hukou_convert.cli import cli
from hukou_convert.cutover import run_cutover
from hukou_convert.idnumbers import mask_id, mask_name
from hukou_convert.ingest import import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.rollback import rollback_run
from hukou_convert.rollback_report import write_rollback_workbook

from .test_workbook import assert_no_formula, summary, table

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
R, H = schema.register, schema.history


def test_rollback_writes_its_workbook(
    engine: Engine, db_url: str, sample_csv: Path, tmp_path: Path
) -> None:
    import_register(engine, sample_csv)
    run = run_cutover(engine, ZHENHAI, resolve_cutoff(ZHENHAI, None))
    with engine.begin() as conn:
        changed = conn.execute(select(H.c.record_id).order_by(H.c.record_id).limit(1)).scalar_one()
        conn.execute(update(R).where(R.c.record_id == changed).values(division_code="330211002001"))
    result = CliRunner().invoke(
        cli,
        [
            "rollback",
            "--run",
            str(run.run_id),
            "--yes",
            "--skip-changed",
            "-q",
            "--db",
            db_url,
            "--out",
            str(tmp_path / "rb"),
        ],
    )
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "rb").glob("*.xlsx")
    assert f"rollback workbook {path}" in result.stdout and "通过 PASSED" in result.stdout
    assert (tmp_path / "rb" / (path.name + ".sha256")).exists()
    assert_no_formula(path)
    with engine.connect() as conn:
        restored = conn.execute(
            select(
                H.c.record_id,
                H.c.id_number,
                R.c.name,
                H.c.original_code,
                R.c.hukou_type,
                H.c.original_category_label,
                R.c.household_category,
            )
            .join(R, R.c.record_id == H.c.record_id)
            .where(H.c.run_id == run.run_id, H.c.reverted_at.is_not(None))
            .order_by(H.c.record_id)
        ).all()
        numbers = conn.execute(select(R.c.id_number)).scalars().all()
    assert len(restored) == run.converted - 1
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["概要", "回退明细", "未回退"]
    rows = table(wb["回退明细"])
    assert [r["记录号"] for r in rows] == [r.record_id for r in restored]
    for row, r in zip(rows, restored, strict=True):
        assert row["公民身份号码"] == mask_id(r.id_number) != r.id_number
        assert row["姓名"] == mask_name(r.name)
        assert (
            row["恢复的户口性质代码"] == r.original_code == r.hukou_type
        )  # the register got it back
        assert row["恢复的户别"] == r.original_category_label == r.household_category
        assert row["回退时间（北京时间）"] is not None
    assert rows[0]["行政区划名称"] and rows[0]["恢复的户口类别"] == "非农业家庭户口"
    skipped = table(wb["未回退"])
    assert [r["记录号"] for r in skipped] == [changed]
    assert skipped[0]["现户口性质"] == "居民户口" and "未回退" in skipped[0]["原因"]
    s = summary(wb["概要"])
    assert (s["已恢复记录"], s["未回退（转换后已变更）"]) == (run.converted - 1, 1)
    assert s["核验：明细行数 = 回退结果"] == "通过" and s["个人信息"] == "已脱敏"
    text = "".join(str(c.value) for ws in wb for row in ws.iter_rows() for c in row)
    assert not any(n and n in text for n in numbers)
    assert not any(n and n in result.stdout for n in numbers)

    # again: already reverted, the same rows; unmasked on request; rollover past a sheet's rows
    again = rollback_run(engine, str(run.run_id))
    assert again.outcome == "already-reverted"
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(xlsx, "MAX_SHEET_ROWS", 100)
        full = write_rollback_workbook(engine, again, tmp_path / "full", unmasked=True)
    assert full.ok and full.restored_rows == run.converted - 1 and "UNMASKED" in full.path.name
    wb = openpyxl.load_workbook(full.path)
    parts = [n for n in wb.sheetnames if n.startswith("回退明细")]
    assert len(parts) == -(-(run.converted - 1) // 99)
    rows = [r for n in parts for r in table(wb[n])]
    assert [r["公民身份号码"] for r in rows] == [r.id_number for r in restored]
