"""The rest of the local marketplace for ``fabstir devnet up``: a discovery service and host nodes.

Each is a ``fabstir`` command in a process of its own session (so it outlives ``devnet up``), its output in a
log beside the network file: ``fabstir discovery serve`` first, then one ``fabstir node serve`` per host
(dev accounts ``host1``, ``host2``..., each with its own receipt key and ledger, announcing itself to the
discovery service), each registered on chain with ``fabstir node register`` at its own price. Their PIDs,
URLs and logs go to ``<network file stem>.processes.json``; ``devnet down`` stops them by PID (only processes
whose command line is still a ``fabstir`` command).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fabstir.chain.anvil import pid_alive
from fabstir.errors import ConfigError

__all__ = ["HOST_PRICES", "Service", "processes_path", "start_marketplace", "stop_marketplace"]

HOST_PRICES = (2_000_000_000, 3_000_000_000, 4_000_000_000)
"""Native price per token x1000 (wei) of host1, host2, host3: different, so strategies have a choice."""
START_TIMEOUT_S = 300.0
_URL = re.compile(r"(?:serving \S+ on|discovery service on) (http://127\.0\.0\.1:\d+)")


@dataclasses.dataclass(frozen=True)
class Service:
    name: str
    pid: int
    url: str
    log: str


def processes_path(network_file: Path) -> Path:
    return network_file.with_name(f"{network_file.stem}.processes.json")


def start_marketplace(network_file: Path, accounts: dict[str, str], model_path: str | None, model: str,
                      hosts: int, say: object = print, *, checkpoint_proofs: bool = False) -> list[Service]:
    """Start the discovery service and ``hosts`` registered host nodes serving ``model_path`` as ``model``
    (with ``checkpoint_proofs``, each host proves its checkpoints; the marketplace needs a checkpoint verifier).

    Raises:
        ConfigError: a process did not come up (its log's tail in the message); everything started is stopped.
    """
    assert callable(say)
    started: list[Service] = []
    try:
        discovery = _launch("discovery", ["discovery", "serve", "--port", str(_free_port())], network_file, {})
        started.append(discovery)
        say(f"  discovery service {discovery.url} (pid {discovery.pid})")
        for number in range(1, hosts + 1):
            name = f"host{number}"
            data = network_file.with_name(f"{network_file.stem}.{name}")
            data.mkdir(exist_ok=True)
            argv = ["node", "serve", "--port", str(_free_port()), "--network", str(network_file),
                    "--discovery-url", discovery.url, "--signing-key-file", str(data / "receipts.key"),
                    "--ledger", str(data / "ledger.db")]
            if model_path:
                argv += ["--model", model_path]
            env = {"FABSTIR_NODE_HOST_KEY": accounts[name], "XDG_DATA_HOME": str(data)}
            if checkpoint_proofs:
                env["FABSTIR_NODE_CHECKPOINT_PROOFS"] = "1"
            host = _launch(name, argv, network_file, env)
            started.append(host)
            price = HOST_PRICES[(number - 1) % len(HOST_PRICES)]
            _fabstir(["node", "register", "--network", str(network_file), "--account", name, "--api-url", host.url,
                      "--model", model, "--price-native", str(price), "--name", f"devnet {name}",
                      "--signing-key-file", str(data / "receipts.key")])
            say(f"  {name} serving {model} at {host.url} (pid {host.pid}), {price} wei per 1000 tokens")
    except BaseException:
        for service in started:
            _stop(service)
        raise
    processes_path(network_file).write_text(json.dumps([dataclasses.asdict(s) for s in started], indent=1))
    return started


def stop_marketplace(network_file: Path) -> list[str]:
    """Stop the processes ``devnet up`` started for ``network_file``; one line per process."""
    path = processes_path(network_file)
    if not path.is_file():
        return []
    lines = []
    for row in json.loads(path.read_text()):
        service = Service(**row)
        lines.append(f"{service.name} (pid {service.pid}): {_stop(service)}")
    return lines


def _launch(name: str, argv: list[str], network_file: Path, env: dict[str, str]) -> Service:
    log = network_file.with_name(f"{network_file.stem}.{name}.log")
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fabstir.cli", *argv], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **env})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = _URL.search(log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return Service(name, process.pid, found.group(1), str(log))
        if process.poll() is not None:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
    raise ConfigError(f"devnet {name} did not start (log {log}):\n{tail}", code="DEVNET_START_FAILED")


def _fabstir(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "fabstir.cli", *argv], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ConfigError(f"fabstir {' '.join(argv[:2])} failed: {done.stderr.strip()[-1500:]}",
                          code="DEVNET_START_FAILED")


def _stop(service: Service, timeout: float = 15.0) -> str:
    if not pid_alive(service.pid):
        return "was not running"
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if b"fabstir.cli" not in cmdline:
        return "the PID is another program now; left alone"
    os.kill(service.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(service.pid):
            return "stopped"
        time.sleep(0.1)
    os.kill(service.pid, signal.SIGKILL)
    return "killed (it ignored SIGTERM)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
