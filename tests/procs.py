"""Real processes for the fault tests, started in milliseconds.

Each command runs in its own process forked from a multiprocessing *forkserver* that has already
imported hukou_convert (starting ``python -m hukou_convert`` costs ~0.7 s; twenty kills in a row on
three databases would spend most of CI's time importing). The child is a separate process with its
own engine and connections, runs ``hukou-convert`` exactly as the console script does, and is killed
with a real SIGKILL: nothing in it gets to clean up. Its stdout and stderr go to files.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["hukou_convert.cli", "tests.procs"])


def _child(
    args: list[str],
    cwd: str,
    out: str,
    err: str,
    env: dict[str, str],
    patches: list[tuple[str, str, Any]],
) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    for module, attr, value in patches:  # test instrumentation, e.g. smaller import chunks
        setattr(importlib.import_module(module), attr, value)
    from hukou_convert.cli import cli

    code: int = 1
    try:
        cli.main(args=args, prog_name="hukou-convert", standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


class Proc:
    """One running ``hukou-convert`` command."""

    _serial = 0

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        patches: list[tuple[str, str, Any]] | None = None,
    ) -> None:
        Proc._serial += 1
        self.out_path = cwd / f".proc-{os.getpid()}-{Proc._serial}.out"
        self.err_path = cwd / f".proc-{os.getpid()}-{Proc._serial}.err"
        base = {k: v for k, v in os.environ.items() if not k.startswith("HUKOU_")}
        self.process = _CTX.Process(
            target=_child,
            args=(
                args,
                str(cwd),
                str(self.out_path),
                str(self.err_path),
                base | (env or {}),
                patches or [],
            ),
        )
        self.process.start()
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        self.process.kill()
        self.process.join(30)

    def wait(self, timeout: float = 300) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.kill()
            raise AssertionError(f"{self.describe()} did not finish within {timeout} s")
        return self.process.exitcode

    def output(self) -> tuple[str, str]:
        read = lambda p: p.read_text(encoding="utf-8") if p.exists() else ""  # noqa: E731
        return read(self.out_path), read(self.err_path)

    def communicate(self, timeout: float = 300) -> tuple[int, str, str]:
        code = self.wait(timeout)
        out, err = self.output()
        return code, out, err

    def describe(self) -> str:
        return f"pid {self.pid} (exit {self.poll()}): {self.output()[1][-2000:]}"


def hukou(cwd: Path, url: str, *args: str, env: dict[str, str] | None = None, **kw: Any) -> Proc:
    return Proc([*args, "--db", url], cwd, env=env, **kw)


def wait_until(check: Any, proc: Proc, what: str, timeout: float = 120) -> None:
    """Poll ``check()`` (exceptions count as False: a table not yet created, SQLite busy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.describe()}")
        time.sleep(0.002)
    raise AssertionError(f"no {what} within {timeout} s")
