"""A real local JSON-RPC chain: anvil (Foundry), from the npm package pinned in ``tools/chain``.

Theory of operation: :func:`find_anvil` locates the native binary that
``npm ci --prefix tools/chain`` unpacks (``$FABSTIR_ANVIL`` overrides it);
:func:`start_anvil` runs it on 127.0.0.1 only, on a free port unless told
otherwise, with its output in a log file (never a pipe that could fill up), and
returns once it answers ``eth_chainId``. :meth:`AnvilProcess.stop` ends it by
PID (SIGTERM, then SIGKILL). A *detached* anvil (``fabstir devnet up``) gets
its own session so that it outlives the command; :func:`stop_anvil_pid` stops
it later by PID, after checking in ``/proc`` that the PID is still an anvil.

Anvil's accounts come from the same development mnemonic as
:func:`fabstir.chain.backend.dev_account`, each funded with 10,000 ETH.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

from fabstir.errors import ChainError, ConfigError

__all__ = [
    "ANVIL_ENV",
    "AnvilProcess",
    "anvil_running",
    "find_anvil",
    "is_anvil_pid",
    "pid_alive",
    "running_anvil",
    "start_anvil",
    "stop_anvil_pid",
]

ANVIL_ENV = "FABSTIR_ANVIL"
"""Environment variable naming an anvil binary to use instead of the one in ``tools/chain``."""

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "run `npm ci --prefix tools/chain` in the repository root"
_START_ATTEMPTS = 5
"""Tries with a fresh free port when anvil loses a port race (only when the port was chosen for it)."""


def _platform_package() -> str:
    """The ``@foundry-rs/anvil-<os>-<arch>`` package holding the binary for this machine."""
    system = {"linux": "linux", "darwin": "darwin", "win32": "win32"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"anvil-{system}-{arch}"


def _search_roots() -> list[Path]:
    """Directories whose ancestors may hold the repository's ``tools/chain``: the cwd, then this package."""
    roots: list[Path] = []
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for directory in (start, *start.parents):
            if directory not in roots:
                roots.append(directory)
    return roots


def find_anvil() -> Path:
    """The anvil binary: ``$FABSTIR_ANVIL``, else ``tools/chain/node_modules`` of the nearest repository.

    Raises:
        ConfigError: (code ``ANVIL_NOT_FOUND``) the override is not an executable file, or anvil is
            not installed; the message says how to install it.
    """
    override = os.environ.get(ANVIL_ENV)
    if override:
        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"${ANVIL_ENV}={override} is not an executable file", code="ANVIL_NOT_FOUND")
        return path
    executable = "anvil.exe" if sys.platform == "win32" else "anvil"
    relative = Path("node_modules") / "@foundry-rs" / _platform_package() / "bin" / executable
    tools_dirs: list[Path] = []
    for root in _search_roots():
        tools = root / "tools" / "chain"
        if tools.is_dir():
            tools_dirs.append(tools)
            candidate = tools / relative
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    where = f" (looked in {tools_dirs[0] / relative})" if tools_dirs else " (no tools/chain directory found)"
    raise ConfigError(f"anvil is not installed{where}: {INSTALL_HINT}, or set ${ANVIL_ENV}",
                      code="ANVIL_NOT_FOUND")


# --- processes by PID -----------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    """The one-letter state from ``/proc/PID/stat``, or ``None`` when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0] if ")" in stat else "?"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped counts as gone)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child that has exited
    if Path("/proc").is_dir():
        state = _proc_state(pid)
        return state is not None and state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_anvil_pid(pid: int) -> bool:
    """Whether ``pid`` is a live process whose command line names anvil (guards against reused PIDs)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"anvil" in cmdline


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


def stop_anvil_pid(pid: int, timeout: float = 5.0) -> str:
    """Stop the anvil running as ``pid`` (SIGTERM, then SIGKILL after ``timeout`` s).

    Returns what happened: ``"stopped"``, ``"killed"``, ``"not running"`` or ``"not anvil"``
    (the PID now belongs to another program, which is left alone).
    """
    if not pid_alive(pid):
        return "not running"
    if not is_anvil_pid(pid):
        return "not anvil"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "stopped"
    if _wait_gone(pid, timeout):
        return "stopped"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, timeout)
    return "killed"


# --- ports --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _check_port_free(port: int) -> None:
    """Raise ConfigError (``PORT_IN_USE``) when ``127.0.0.1:port`` cannot be bound (as anvil binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {LOOPBACK} is already in use; pick another with --port",
                                  code="PORT_IN_USE") from None
            raise ConfigError(f"cannot bind {LOOPBACK}:{port}: {exc.strerror}", code="BIND_FAILED") from None


def _chain_id(port: int, timeout: float = 1.0) -> int | None:
    """``eth_chainId`` at ``127.0.0.1:port``, or ``None`` when nothing answers (yet)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)  # no proxies: loopback only
    try:
        connection.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        return int(answer["result"], 16)
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        return None
    finally:
        connection.close()


# --- the process ------------------------------------------------------------------------------

_live: dict[int, AnvilProcess] = {}


@dataclasses.dataclass(eq=False)
class AnvilProcess:
    """A running anvil on ``127.0.0.1:port``; stop it with :meth:`stop` (or use it as a context manager)."""

    pid: int
    port: int
    chain_id: int
    log_path: Path
    detached: bool = False
    _proc: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)
    _owns_log: bool = dataclasses.field(default=False, repr=False)

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def rpc_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return pid_alive(self.pid)

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """End the process by PID: SIGTERM, then SIGKILL after ``timeout`` seconds. Safe to call twice."""
        _live.pop(self.pid, None)
        if self._proc is not None:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)
                try:
                    self._proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    self._proc.wait(timeout=timeout)
        else:
            stop_anvil_pid(self.pid, timeout)
        if self._owns_log:
            self.log_path.unlink(missing_ok=True)
            self._owns_log = False

    def release(self) -> None:
        """Forget the process without stopping it (a detached anvil that must outlive this program)."""
        _live.pop(self.pid, None)
        if self._proc is not None:
            self._proc.returncode = 0  # not ours to wait for any more; stops Popen warning at exit
            self._proc = None

    def __enter__(self) -> AnvilProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_anvil(
    port: int = 0,
    *,
    block_time: float | None = None,
    mixed_mining: bool = True,
    detached: bool = False,
    log_path: str | Path | None = None,
    timeout: float = 15.0,
    extra_args: tuple[str, ...] = (),
) -> AnvilProcess:
    """Start anvil on ``127.0.0.1:port`` (0: a free port) and wait until it answers ``eth_chainId``.

    ``block_time`` mines a block every that many seconds as well (with ``mixed_mining``,
    transactions are still mined at once; without it, only at the interval): chain time then
    moves on while the chain is idle, which hosts need to settle after the dispute window.
    By default blocks are mined only when a transaction arrives, and chain time stands still
    in between. ``detached`` puts anvil in its own session so it outlives this process; its
    output goes to ``log_path`` (default: a temporary file, removed by :meth:`AnvilProcess.stop`).

    Raises:
        ConfigError: anvil is not installed (``ANVIL_NOT_FOUND``) or the port is busy (``PORT_IN_USE``).
        ChainError: anvil exited or did not answer within ``timeout`` seconds (``ANVIL_FAILED``).
    """
    binary = find_anvil()
    if port:
        _check_port_free(port)
    attempts = 1 if port else _START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        chosen = port or _free_port()
        try:
            return _launch(binary, chosen, block_time, mixed_mining, detached, log_path, timeout, extra_args)
        except _PortTaken:
            if attempt == attempts:
                raise ConfigError(f"port {chosen} on {LOOPBACK} is already in use; pick another with --port",
                                  code="PORT_IN_USE") from None
    raise AssertionError("unreachable")  # pragma: no cover


class _PortTaken(Exception):
    pass


def _launch(binary: Path, port: int, block_time: float | None, mixed_mining: bool, detached: bool,
            log_path: str | Path | None, timeout: float, extra_args: tuple[str, ...]) -> AnvilProcess:
    argv = [str(binary), "--host", LOOPBACK, "--port", str(port), "--silent", *extra_args]
    if block_time is not None:
        argv += ["--block-time", f"{block_time:g}"]
        if mixed_mining:
            argv.append("--mixed-mining")
    log_file: IO[bytes]
    if log_path is None:
        log_file = tempfile.NamedTemporaryFile(prefix="fabstir-anvil-", suffix=".log", delete=False)
        path, owns_log = Path(log_file.name), True
    else:
        path, owns_log = Path(log_path), False
        path.parent.mkdir(parents=True, exist_ok=True)
        log_file = path.open("ab")
    env = dict(os.environ)
    env.setdefault("NO_COLOR", "1")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                env=env, start_new_session=detached, close_fds=True)
    except OSError as exc:
        log_file.close()
        raise ChainError(f"cannot run anvil ({binary}): {exc.strerror}", code="ANVIL_FAILED") from None
    finally:
        log_file.close()  # the child has its own descriptor
    process = AnvilProcess(pid=proc.pid, port=port, chain_id=0, log_path=path, detached=detached, _proc=proc,
                           _owns_log=owns_log)
    _live[proc.pid] = process
    deadline = time.monotonic() + timeout
    while True:
        chain_id = _chain_id(port)
        if chain_id is not None and proc.poll() is None:
            process.chain_id = chain_id
            return process
        code = proc.poll()
        if code is not None:
            tail = process.log_tail()
            process.stop()
            if "Address already in use" in tail:
                raise _PortTaken()
            detail = tail.splitlines()[-1] if tail else "no output"
            raise ChainError(f"anvil exited with code {code} while starting: {detail}", code="ANVIL_FAILED")
        if time.monotonic() > deadline:
            process.stop()
            raise ChainError(f"anvil did not answer on {process.rpc_url} within {timeout:g} s",
                             code="ANVIL_FAILED")
        time.sleep(0.02)


def _stop_all() -> None:
    """Stop every non-detached anvil this process started (interpreter exit)."""
    for process in list(_live.values()):
        if not process.detached:
            with contextlib.suppress(Exception):
                process.stop(timeout=2.0)


atexit.register(_stop_all)


@contextlib.asynccontextmanager
async def running_anvil(port: int = 0, **options: Any) -> AsyncIterator[AnvilProcess]:
    """``async with running_anvil() as anvil:`` starts anvil (off the event loop) and always stops it."""
    import asyncio

    process = await asyncio.to_thread(start_anvil, port, **options)
    try:
        yield process
    finally:
        await asyncio.to_thread(process.stop)


@contextlib.contextmanager
def anvil_running(port: int = 0, **options: Any) -> Iterator[AnvilProcess]:
    """The synchronous form of :func:`running_anvil`."""
    process = start_anvil(port, **options)
    try:
        yield process
    finally:
        process.stop()
