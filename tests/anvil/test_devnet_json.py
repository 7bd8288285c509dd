"""``fabstir devnet up/status/down --json`` and the status table, as real subprocesses against anvil."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.chain.anvil import is_anvil_pid, pid_alive, stop_anvil_pid
from fabstir.chain.backend import dev_account

ROOT = Path(__file__).resolve().parents[2]


def fabstir(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run([sys.executable, "-m", "fabstir.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture
def devnet_file(tmp_path: Path, anvil_binary: Path) -> Iterator[Path]:
    path = tmp_path / "devnet.json"
    yield path
    try:  # safety net: a test that failed before devnet down
        pid = json.loads(path.read_text(encoding="utf-8")).get("anvil_pid")
    except (OSError, ValueError):
        return
    if isinstance(pid, int) and is_anvil_pid(pid):
        stop_anvil_pid(pid)


def test_devnet_up_status_down_as_json_and_table(devnet_file: Path) -> None:
    up = fabstir("devnet", "up", "--file", str(devnet_file), "--hosts", "0", "--model", "local/x.gguf", "--json")
    assert up.returncode == 0, up.stderr
    described = json.loads(up.stdout)  # the whole of stdout is the one JSON line
    assert described["rpc_url"].startswith("http://127.0.0.1:") and described["chain_id"] == 31337
    assert described["accounts"]["host1"] == dev_account(1).address, "addresses only"
    assert "0x" + bytes(dev_account(1).key).hex() not in up.stdout, "private keys stay in the network file"
    assert described["models"] == ["local/x.gguf"] and described["services"] == []
    assert set(described["contracts"]) >= {"marketplace", "node_registry", "stake_token"}
    assert "[fabstir] deploying the marketplace contracts" in up.stderr and "\x1b[" not in up.stderr
    pid = described["anvil"]["pid"]
    assert is_anvil_pid(pid)

    status = fabstir("devnet", "status", "--file", str(devnet_file), "--json")
    assert status.returncode == 0, status.stderr
    now = json.loads(status.stdout)
    assert now["anvil"]["running"] is True and now["anvil"]["pid"] == pid
    assert now["contracts"] == described["contracts"]

    listing = fabstir("devnet", "status", "--file", str(devnet_file))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0] == f"devnet of {devnet_file}" and lines[1].split() == ["process", "pid", "state", "url", "log"]
    assert lines[2].split()[:4] == ["anvil", str(pid), "running", described["rpc_url"]]

    down = fabstir("devnet", "down", "--file", str(devnet_file), "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout) == {"network_file": str(devnet_file), "services": [],
                                       "anvil": {"pid": pid, "outcome": "stopped"}}
    assert not pid_alive(pid)
    after = fabstir("devnet", "status", "--file", str(devnet_file), "--json")
    assert after.returncode == 1 and json.loads(after.stdout)["anvil"]["running"] is False
