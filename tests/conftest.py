"""Fixtures: one real database per test on SQLite, PostgreSQL and MariaDB.

Server URLs come from HUKOU_TEST_POSTGRES_URL / HUKOU_TEST_MYSQL_URL (defaults: this project's
machines). Each test gets a fresh database of its own, dropped afterwards. An unreachable server
skips its tests with the reason locally, and fails the run when CI=true.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from hukou_convert.db import make_engine, parse_url

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"

POSTGRES_URL = os.environ.get(
    "HUKOU_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("HUKOU_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
BACKENDS = ["sqlite", "postgresql", "mysql"]

_unreachable: dict[str, str] = {}


def _admin_engine(backend: str) -> Engine:
    url = parse_url(POSTGRES_URL if backend == "postgresql" else MYSQL_URL)
    return create_engine(url, isolation_level="AUTOCOMMIT", hide_parameters=True)


def _server_or_skip(backend: str) -> Engine:
    if backend in _unreachable:
        _skip_or_fail(backend, _unreachable[backend])
    engine = _admin_engine(backend)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        _unreachable[backend] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        engine.dispose()
        _skip_or_fail(backend, _unreachable[backend])
    return engine


def _skip_or_fail(backend: str, reason: str) -> None:
    message = f"{backend} server unreachable ({reason})"
    if os.environ.get("CI") == "true":
        pytest.fail(message + ": CI=true requires every database", pytrace=False)
    pytest.skip(message)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty database on each backend."""
    yield from _fresh_database(request.param, tmp_path)


def _fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'hukou.db'}"
        return
    admin = _server_or_skip(backend)
    name = f"hk_{uuid.uuid4().hex[:12]}"
    base = POSTGRES_URL if backend == "postgresql" else MYSQL_URL
    with admin.connect() as conn:
        if backend == "postgresql":
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        else:
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def two_db_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two fresh databases on the same backend: one to interrupt, one to run straight through."""
    fresh = contextmanager(_fresh_database)
    with ExitStack() as stack:
        urls = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            urls.append(stack.enter_context(fresh(request.param, tmp_path / name)))
        yield urls[0], urls[1]


@pytest.fixture
def pg_engine(tmp_path: Path) -> Iterator[Engine]:
    """A fresh PostgreSQL database, for what only PostgreSQL does."""
    for url in _fresh_database("postgresql", tmp_path):
        yield from _engine_on(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hukou.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    yield from _engine_on(db_url)


def _engine_on(url: str) -> Iterator[Engine]:
    eng = make_engine(parse_url(url))
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def sample_csv(tmp_path: Path) -> Path:
    """A private copy of the GBK sample register (tests write reject files beside cwd)."""
    target = tmp_path / "zhenhai_register.csv"
    shutil.copy(SAMPLE / "zhenhai_register.csv", target)
    return target


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default reject files and reports land in cwd: keep them in the test's directory."""
    monkeypatch.chdir(tmp_path)
