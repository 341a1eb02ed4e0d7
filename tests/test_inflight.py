"""In-flight 农转非/非转农 applications at the cutoff, and changes during the freeze, on 3 databases."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, select

from hukou_convert import schema
from hukou_convert.cutover import rehearse, run_cutover
from hukou_convert.findings import Finding
from hukou_convert.idnumbers import mask_id, mask_name
from hukou_convert.inflight import Outcome
from hukou_convert.ingest import import_applications, import_register
from hukou_convert.profiles import BUILTIN_PROFILES, resolve_cutoff
from hukou_convert.verify import verify_run
from hukou_convert.workbook import rewrite_report, write_run_workbook

from .helpers import ident, person, sheet_table, table_dump, write_register

ZHENHAI = BUILTIN_PROFILES["zhenhai"]
CUTOFF = resolve_cutoff(ZHENHAI, None)  # 2016-09-30 24:00

P = {n: ident("330211", "19700101", 2 * n + 1) for n in range(1, 8)}
UNKNOWN = ident("330211", "19700101", 99)


def _register(tmp_path: Path, *extra: dict[str, str]) -> Path:
    rows = [
        person(P[1], "2", household="H1", name="甲"),
        person(P[2], "4", household="H2", category="", name="乙"),
        person(P[3], "1", household="H3", name="丙"),
        person(P[4], "2", household="H4", division="330302001001", name="丁"),
        person(P[5], "2", household="H5", status="注销", name="戊"),
        person(P[6], "5", household="H6", name="己"),
        person(P[7], "农业", household="H7", name="庚"),
        *extra,
    ]
    return write_register(tmp_path / "register.csv", rows)


APPLICATIONS = [
    # id, person, kind, applied, status, approved -> expected outcome
    ("A01", P[1], "农转非", "2016-08-01 10:00", "已批准", "2016-09-20 15:00", Outcome.APPLIED),
    ("A02", P[2], "农转非", "2016-08-01 10:00", "已批准", "2016-09-30 23:59", Outcome.APPLIED),
    ("A03", P[3], "非转农", "2016-09-01 10:00", "待审批", "", Outcome.TERMINATED),
    ("A04", P[4], "农转非", "2016-08-01 10:00", "已批准", "2016-09-01 10:00", Outcome.OUT_OF_SCOPE),
    ("A05", P[5], "农转非", "2016-08-01 10:00", "已批准", "2016-09-01 10:00", Outcome.OUT_OF_SCOPE),
    (
        "A06",
        P[6],
        "农转非",
        "2016-08-01 10:00",
        "已批准",
        "2016-09-01 10:00",
        Outcome.NOT_APPLICABLE,
    ),
    ("A07", P[7], "农转非", "2016-10-01 00:00", "待审批", "", Outcome.REJECTED),
    ("A08", UNKNOWN, "农转非", "2016-08-01 10:00", "待审批", "", Outcome.NOT_IN_REGISTER),
    (
        "A09",
        P[7],
        "农转非",
        "2016-07-01 10:00",
        "已驳回",
        "2016-07-15 10:00",
        Outcome.ALREADY_REJECTED,
    ),
    ("A10", P[7], "农转非", "2016-09-01 10:00", "已批准", "2016-10-01 00:00", Outcome.TERMINATED),
]


def _applications(tmp_path: Path) -> Path:
    path = tmp_path / "apps.csv"
    lines = ["业务编号,公民身份号码,业务类型,申请时间,审批状态,审批时间"]
    lines += [",".join(a[:6]) for a in APPLICATIONS]
    path.write_text("\n".join(lines) + "\n", encoding="gbk")
    return path


def test_each_application_gets_its_outcome_and_the_rehearsal_predicts_it(
    engine: Engine, tmp_path: Path
) -> None:
    import_register(engine, _register(tmp_path))
    import_applications(engine, _applications(tmp_path))
    before = table_dump(engine)
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF)
    assert table_dump(engine) == before  # deciding writes nothing in a rehearsal
    expected = {a[0]: a[6] for a in APPLICATIONS}
    assert {d.application_id: d.outcome for d in rehearsal.decisions} == expected

    result = run_cutover(engine, ZHENHAI, CUTOFF)
    A, H, R = schema.applications, schema.history, schema.register
    with engine.connect() as conn:
        stored = {
            r.application_id: (r.outcome, r.outcome_run_id)
            for r in conn.execute(select(A.c.application_id, A.c.outcome, A.c.outcome_run_id))
        }
        history = {
            r.id_number: r
            for r in conn.execute(
                select(
                    H.c.id_number,
                    H.c.original_code,
                    H.c.original_nature,
                    H.c.household_category,
                    H.c.application_id,
                )
            )
        }
        types = {
            r.id_number: r.hukou_type for r in conn.execute(select(R.c.id_number, R.c.hukou_type))
        }
    # every outcome about a person in scope is stored, once; people outside it are only reported
    unstored = {Outcome.NOT_IN_REGISTER, Outcome.OUT_OF_SCOPE}
    assert {k: v[0] for k, v in stored.items()} == {
        k: (None if v in unstored else v.value) for k, v in expected.items()
    }
    assert {v[1] for k, v in stored.items() if expected[k] not in unstored} == {result.run_id}
    # approved before the cutoff: the history records the type as of the cutoff, and the application
    assert tuple(history[P[1]][1:]) == ("1", "NON_AGRICULTURAL", "FAMILY", "A01")
    assert tuple(history[P[2]][1:]) == ("3", "NON_AGRICULTURAL", "COLLECTIVE", "A02")
    # terminated / rejected: the type as registered, no application on the history row
    assert tuple(history[P[3]][1:]) == ("1", "NON_AGRICULTURAL", "FAMILY", None)
    assert tuple(history[P[7]][1:]) == ("农业", "AGRICULTURAL", "FAMILY", None)
    assert history[P[6]].application_id is None
    # never applied to people out of scope or inactive
    assert types[P[4]] == "2" and types[P[5]] == "2"
    # the rehearsal predicted the real run's counts exactly
    assert result.converted_by == rehearsal.converted_by
    assert result.census.lines == rehearsal.census.lines
    assert verify_run(engine).ok
    codes = {f.code for f in result.findings}
    assert {"APPLICATION_APPLIED", "APPLICATION_TERMINATED", "APPLICATION_NOT_IN_REGISTER"} <= codes


def test_a_second_run_never_applies_an_application_twice(engine: Engine, tmp_path: Path) -> None:
    import_register(engine, _register(tmp_path))
    import_applications(engine, _applications(tmp_path))
    first = run_cutover(engine, ZHENHAI, CUTOFF)
    state = table_dump(engine)
    again = run_cutover(engine, ZHENHAI, CUTOFF)
    assert again.outcome == "already-complete"
    assert table_dump(engine) == state
    applied = [d for d in again.decisions if d.outcome is Outcome.APPLIED]
    assert {d.application_id for d in applied} == {"A01", "A02"}
    assert [d.application_id for d in again.decisions if not d.stored] == ["A04", "A05", "A08"]
    # a rehearsal after the run reports the stored outcomes and predicts nothing more to convert
    after = rehearse(engine, ZHENHAI, CUTOFF)
    assert after.converted == 0
    assert {d.application_id: d.outcome for d in after.decisions} == {
        d.application_id: d.outcome for d in first.decisions
    }


def test_records_changed_during_the_freeze_are_listed(engine: Engine, tmp_path: Path) -> None:
    rows = [
        person(P[1], "2", household="H1"),
        person(P[2], "2", household="H2"),
        person(P[3], "2", household="H3", division="330302001001"),
    ]
    rows[0]["变更时间"] = "2016-09-29 23:59:59"  # before the 停办 of 2016-09-30
    rows[1]["变更时间"] = "2016-09-30 08:00:00"  # during it
    rows[2]["变更时间"] = "2016-09-30 08:00:00"  # during it, but out of scope
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    rehearsal = rehearse(engine, ZHENHAI, CUTOFF)
    late = [f for f in rehearsal.findings if f.code == "LATE_CHANGE"]
    assert len(late) == 1 and late[0].id_number == P[2]
    assert late[0].category == "停办期变更"
    assert P[2] not in late[0].explanation


def _apps(tmp_path: Path, rows: list[tuple[str, str, str, str, str, str]]) -> Path:
    path = tmp_path / "apps2.csv"
    lines = ["业务编号,公民身份号码,业务类型,申请时间,审批状态,审批时间"]
    lines += [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_run_never_decides_for_good_about_people_outside_its_scope(
    engine: Engine, tmp_path: Path
) -> None:
    wenzhou_person = ident("330302", "19700101", 11)
    rows = [
        person(P[1], "2", household="H1"),
        person(wenzhou_person, "2", household="W1", division="330302001001"),
    ]
    import_register(engine, write_register(tmp_path / "r.csv", rows))
    import_applications(
        engine,
        _apps(
            tmp_path,
            [("W01", wenzhou_person, "农转非", "2016-08-01 10:00", "已批准", "2016-09-01 10:00")],
        ),
    )
    zhenhai = run_cutover(engine, ZHENHAI, CUTOFF)
    assert [d.outcome for d in zhenhai.decisions] == [Outcome.OUT_OF_SCOPE]
    A, H = schema.applications, schema.history
    with engine.connect() as conn:
        assert conn.execute(select(A.c.outcome)).scalar_one() is None  # reported, not stored
    wenzhou = BUILTIN_PROFILES["wenzhou"]
    result = run_cutover(engine, wenzhou, resolve_cutoff(wenzhou, None))
    assert [d.outcome for d in result.decisions] == [Outcome.APPLIED]
    with engine.connect() as conn:
        row = conn.execute(
            select(H.c.original_code, H.c.original_nature, H.c.application_id).where(
                H.c.id_number == wenzhou_person
            )
        ).one()
    assert tuple(row) == ("1", "NON_AGRICULTURAL", "W01")


def test_rollback_undoes_an_applied_application_and_reopens_the_decisions(
    engine: Engine, tmp_path: Path
) -> None:
    from hukou_convert.rollback import rollback_run

    import_register(engine, write_register(tmp_path / "r.csv", [person(P[1], "2", household="H1")]))
    original = table_dump(engine)["hukou_register"]
    # approved on 2016-10-15: after a cutoff of 2016-10-01, before one of 2016-10-31
    import_applications(
        engine,
        _apps(
            tmp_path, [("A01", P[1], "农转非", "2016-09-01 10:00", "已批准", "2016-10-15 10:00")]
        ),
    )
    early = resolve_cutoff(ZHENHAI, "2016-10-01 24:00", force=True)
    first = run_cutover(engine, ZHENHAI, early)
    assert [d.outcome for d in first.decisions] == [Outcome.TERMINATED]
    rollback_run(engine, str(first.run_id))
    assert table_dump(engine)["hukou_register"] == original
    assert verify_run(engine, first.run_id).ok

    late = resolve_cutoff(ZHENHAI, "2016-10-31 24:00", force=True)
    assert [d.outcome for d in rehearse(engine, ZHENHAI, late).decisions] == [Outcome.APPLIED]
    second = run_cutover(engine, ZHENHAI, late)
    H = schema.history
    with engine.connect() as conn:
        live = conn.execute(
            select(H.c.original_code, H.c.application_id).where(H.c.reverted_at.is_(None))
        ).one()
    assert tuple(live) == ("1", "A01")
    # and rolling that one back gives the register of before the application
    rollback_run(engine, str(second.run_id))
    assert table_dump(engine)["hukou_register"] == original
    check = verify_run(engine, second.run_id)
    assert check.ok, check.discrepancies()


# application -> (severity, explanation, note, action) of its 异常清单 row: the rule of issue 4 for
# each case of APPLICATIONS; the note is the reason the rehearsal gives
CUTOFF_TEXT = "2016-10-01T00:00:00+08:00"
APPLIED_ACTION = "先行办结，历史表按截止时点类型记载并注明业务编号"
UNRESOLVED = "不予办理，待核实"
INFLIGHT_ROWS: dict[str, tuple[str, str, str, str]] = {
    "A01": ("警告", "截止时点前已批准的农转非业务", "", APPLIED_ACTION),
    "A02": ("警告", "截止时点前已批准的农转非业务", "", APPLIED_ACTION),
    "A03": ("警告", "截止时点未批准的非转农业务", "审批状态 待审批", "停止办理"),
    "A04": ("错误", "农转非业务的申请人不在本次范围内或非在册", "", UNRESOLVED),
    "A05": ("错误", "农转非业务的申请人不在本次范围内或非在册", "", UNRESOLVED),
    "A06": (
        "错误",
        "已批准的农转非业务与申请人现登记类型不符",
        "现登记户口性质 '5'",
        "未办理，待人工核实",
    ),
    "A07": ("警告", "截止时点及以后申请的农转非业务", f"申请时间 {CUTOFF_TEXT}", "不予受理"),
    "A08": ("错误", "农转非业务的申请人不在户籍登记中", "", UNRESOLVED),
    "A09": ("警告", "截止时点前已驳回的农转非业务", "", "无需处理"),
    "A10": (
        "警告",
        "截止时点未批准的农转非业务",
        f"审批状态 已批准，批准时间 {CUTOFF_TEXT}",
        "停止办理",
    ),
}
# changed exactly when the 停办 began (2016-09-30 00:00): listed; a second earlier: not
LATE = ident("330211", "19700101", 21)
EARLY = ident("330211", "19700101", 23)
LISTED = ("在办业务", "停办期变更")


def test_every_outcome_has_its_finding_stored_outcome_and_workbook_row(
    engine: Engine, tmp_path: Path
) -> None:
    late = person(LATE, "2", household="H8", name="辛八", updated="2016-09-30 00:00:00")
    early = person(EARLY, "2", household="H9", name="壬九", updated="2016-09-29 23:59:59")
    import_register(engine, _register(tmp_path, late, early))
    import_applications(engine, _applications(tmp_path))
    R = schema.register
    with engine.connect() as conn:
        people = {
            r.id_number: (r.record_id, r.name)
            for r in conn.execute(select(R.c.id_number, R.c.record_id, R.c.name))
        }
    assert len(people) == 9  # one record per person

    def expected_rows(run_id: str | None) -> list[dict[str, object]]:
        """The in-flight and late-change rows. The real run's own report (``run_id``) says it
        decided the outcomes it stored: all but those about people it does not cover."""
        rows: list[dict[str, object]] = []
        for app_id, number, kind, *_, outcome in APPLICATIONS:
            severity, text, note, action = INFLIGHT_ROWS[app_id]
            assert kind in text
            if run_id and outcome not in (Outcome.NOT_IN_REGISTER, Outcome.OUT_OF_SCOPE):
                note = f"已由运行 {run_id} 处理"
            record, name = people.get(number, (None, None))
            rows.append(
                {
                    "类别代码": f"APPLICATION_{outcome.value}",
                    "类别": "在办业务",
                    "严重程度": severity,
                    "记录号": record,
                    "公民身份号码": mask_id(number),
                    "18位号码（由15位升级）": None,
                    "姓名": mask_name(name) or None,
                    "说明": f"{text}（业务编号 {app_id}）" + (f"：{note}" if note else ""),
                    "处理": action,
                }
            )
        rows.append(
            {
                "类别代码": "LATE_CHANGE",
                "类别": "停办期变更",
                "严重程度": "警告",
                "记录号": people[LATE][0],
                "公民身份号码": mask_id(LATE),
                "18位号码（由15位升级）": None,
                "姓名": "辛*",
                "说明": "停办（2016-09-30T00:00:00+08:00 起）期间记录有变更，"
                "变更时间 2016-09-30T00:00:00+08:00",
                "处理": "照常转换，列入复核",
            }
        )
        return rows

    def listed(path: Path) -> list[dict[str, object]]:
        rows = sheet_table(path, "异常清单")
        assert [r["序号"] for r in rows] == list(range(1, len(rows) + 1))
        return [{k: v for k, v in r.items() if k != "序号"} for r in rows if r["类别"] in LISTED]

    def findings(found: list[Finding]) -> list[tuple[str, object]]:
        return [(f.code, f.record_id) for f in found if f.category in LISTED]

    rehearsal = rehearse(engine, ZHENHAI, CUTOFF)
    rehearsed = expected_rows(None)
    assert findings(rehearsal.findings) == [(r["类别代码"], r["记录号"]) for r in rehearsed]
    assert listed(write_run_workbook(engine, rehearsal, tmp_path / "r").path) == rehearsed

    result = run_cutover(engine, ZHENHAI, CUTOFF)
    run_id = str(result.run_id)
    done = expected_rows(run_id)
    assert findings(result.findings) == [(r["类别代码"], r["记录号"]) for r in done]
    assert listed(write_run_workbook(engine, result, tmp_path / "c").path) == done
    # and the same when the report is written again later, from what the run recorded
    assert listed(rewrite_report(engine, run_id, tmp_path / "later").path) == done

    # the applications table: the outcome about each person the run covers, the record, the codes
    A, H = schema.applications, schema.history
    with engine.connect() as conn:
        stored = {
            r.application_id: tuple(r)[1:]
            for r in conn.execute(
                select(
                    A.c.application_id,
                    A.c.outcome,
                    A.c.outcome_run_id,
                    A.c.outcome_record_id,
                    A.c.outcome_from_code,
                    A.c.outcome_to_code,
                )
            )
        }
        converted = set(conn.execute(select(H.c.id_number)).scalars())
    unstored = (None, None, None, None, None)
    assert stored == {
        "A01": ("APPLIED", run_id, people[P[1]][0], "2", "1"),
        "A02": ("APPLIED", run_id, people[P[2]][0], "4", "3"),
        "A03": ("TERMINATED", run_id, people[P[3]][0], None, None),
        "A04": unstored,  # out of scope: another run decides
        "A05": unstored,  # not an active record
        "A06": ("NOT_APPLICABLE", run_id, people[P[6]][0], None, None),
        "A07": ("REJECTED", run_id, people[P[7]][0], None, None),
        "A08": unstored,  # not in the register
        "A09": ("ALREADY_REJECTED", run_id, people[P[7]][0], None, None),
        "A10": ("TERMINATED", run_id, people[P[7]][0], None, None),
    }
    # a late change is converted as usual (照常转换)
    assert {LATE, EARLY} <= converted
