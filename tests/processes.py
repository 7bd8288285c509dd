"""Real node processes for chaos tests: ``fabstir node serve`` in a subprocess, stopped by its PID.

Each node writes its output to a log file in its data folder; :meth:`NodeProcess.url` waits until the log
says where it serves. :meth:`kill` is SIGKILL (no shutdown code runs), :meth:`freeze` SIGSTOP (a stall: the
socket stays open, nothing moves), :meth:`stop` always reaps the process, whatever state it is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SERVING = re.compile(r"serving \S+ on (http://127\.0\.0\.1:\d+)")


class NodeProcess:
    """``fabstir node serve`` in a subprocess, its output in a log file; stopped by its PID."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    @classmethod
    def start(cls, model: Path, data: Path, name: str, *, network: Path | None = None, host_key: str | None = None,
              extra: Sequence[str] = ()) -> NodeProcess:
        """A node over ``model``; paid on ``network`` with ``host_key`` (ledger and receipt key in ``data``)."""
        data.mkdir(parents=True, exist_ok=True)
        log = data / f"{name}.log"
        argv = [sys.executable, "-m", "fabstir.cli", "node", "serve", "--model", str(model), "--port", "0",
                "--parallel", "1", "--threads", "1", "--signing-key-file", str(data / "receipts.key"), *extra]
        env = {**os.environ, "XDG_DATA_HOME": str(data), "NO_PROXY": "127.0.0.1,localhost",
               "no_proxy": "127.0.0.1,localhost"}
        if network is not None:
            argv += ["--network", str(network), "--ledger", str(data / "ledger.db")]
        if host_key is not None:
            env["FABSTIR_NODE_HOST_KEY"] = host_key
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=ROOT)
        return cls(process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def url(self, timeout: float = 180) -> str:
        """The URL it serves on, once it says so."""
        async with asyncio.timeout(timeout):
            while True:
                found = _SERVING.search(self.log.read_text(encoding="utf-8", errors="replace"))
                if found:
                    return found.group(1)
                if self.process.poll() is not None:
                    pytest.fail(f"the node exited ({self.process.returncode}):\n{self.log.read_text()}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, now: no shutdown code runs."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the process stalls with its sockets open."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGSTOP)

    async def stop(self, timeout: float = 30) -> None:
        """SIGTERM (after SIGCONT, in case it is frozen), then SIGKILL if it lingers; always reaps it."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await self._reap(timeout)
        self.kill()
        await self._reap(timeout)

    async def _reap(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.process.poll() is None:
                await asyncio.sleep(0.05)


@pytest.fixture
async def node_processes() -> AsyncIterator[list[NodeProcess]]:
    """Every node process the test starts; all stopped (by PID) at the end, whatever happened."""
    started: list[NodeProcess] = []
    try:
        yield started
    finally:
        for node in started:
            await node.stop()
