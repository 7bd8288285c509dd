"""``fabstir devnet up / down`` and the host commands against it, as real subprocesses; plus anvil itself."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.chain import anvil as anvil_module
from fabstir.chain.anvil import find_anvil, is_anvil_pid, pid_alive, start_anvil, stop_anvil_pid
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.contracts import Marketplace, model_id
from fabstir.chain.network import NetworkConfig
from fabstir.cli.main import main
from fabstir.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``fabstir ARGS`` in this process (quicker than a subprocess): exit code, stdout, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **(env or {})}
    return subprocess.run([sys.executable, "-m", "fabstir.cli", *args], capture_output=True, text=True,
                          env=merged, cwd=ROOT, timeout=timeout)


def stop_recorded_anvil(path: Path) -> None:
    """Safety net: stop the anvil a network file names, if a test failed before ``devnet down``."""
    try:
        pid = json.loads(path.read_text(encoding="utf-8")).get("anvil_pid")
    except (OSError, ValueError):
        return
    if isinstance(pid, int) and is_anvil_pid(pid):
        stop_anvil_pid(pid)


@pytest.fixture
def devnet_file(tmp_path: Path, anvil_binary: Path) -> Iterator[Path]:
    path = tmp_path / "devnet.json"
    yield path
    from fabstir.cli.devnet_market import stop_marketplace

    stop_marketplace(path)  # hosts and discovery service of a devnet a failed test left up
    stop_recorded_anvil(path)
    stop_recorded_anvil(tmp_path / "second.json")


def test_devnet_up_register_earnings_down(devnet_file: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    up = cli("devnet", "up", "--file", str(devnet_file), "--model", "local/x.gguf", "--dispute-window", "5",
             "--hosts", "0")
    assert up.returncode == 0, up.stderr
    assert "http://127.0.0.1:" in up.stdout and "host1" in up.stdout and "client1" in up.stdout
    assert "approved model local/x.gguf (placeholder digest)" in up.stdout
    network = NetworkConfig.load(devnet_file)
    assert network.anvil_pid is not None and network.anvil_port is not None
    assert network.rpc_url == f"http://127.0.0.1:{network.anvil_port}"
    assert set(network.accounts) == {"owner", "host1", "host2", "host3", "client1", "client2", "client3"}
    assert Path(network.anvil_log or "") == tmp_path / "devnet.anvil.log" and Path(network.anvil_log or "").exists()
    pid = network.anvil_pid
    assert is_anvil_pid(pid)
    assert b"--host\x00127.0.0.1" in Path(f"/proc/{pid}/cmdline").read_bytes()  # loopback only
    assert network.deployment.dispute_window == 5

    chain = Chain.connect(network.rpc_url)
    try:
        market = Marketplace(chain, network.deployment)
        functions = market.marketplace.functions
        assert chain.call_sync(functions.treasuryAddress()) == dev_account(0).address
        assert chain.call_sync(market.model_registry.functions.isModelApproved(model_id("local", "x.gguf")))
        for n in (1, 2, 3):
            assert chain.call_sync(market.stake_token.functions.balanceOf(dev_account(n).address)) == 10_000 * 10**18
        for n in (4, 5, 6):
            assert chain.call_sync(market.stable_token.functions.balanceOf(dev_account(n).address)) == 10_000 * 10**6

        register = cli("node", "register", "--network", str(devnet_file), "--account", "host1",
                       "--api-url", "http://127.0.0.1:8080", "--model", "local/x.gguf")
        assert register.returncode == 0, register.stderr
        assert f"registered {dev_account(1).address}" in register.stdout
        assert chain.call_sync(market.node_registry.functions.isActiveNode(dev_account(1).address))

        # the registry as a discovery source: the host, its chain price, stake and sources; nothing answers pings
        hosts = cli("hosts", "--network", str(devnet_file), "--model", "local/x.gguf", "--strategy", "cheapest",
                    "--json")
        assert hosts.returncode == 0, hosts.stderr
        listing = json.loads(hosts.stdout.strip().splitlines()[-1])
        (row,) = listing["hosts"]
        assert row["address"] == dev_account(1).address and row["api_url"] == "http://127.0.0.1:8080"
        assert row["sources"] == ["chain"] and row["stake"] > 0 and row["price_per_token"] > 0
        assert row["reachable"] is False and listing["chosen"] is None  # nothing serves its URL: banned for now
        table = cli("hosts", "--network", str(devnet_file), "--no-ping")
        assert table.returncode == 0 and "chosen by strategy 'composite'" in table.stdout
        assert "chain: ok 1 host(s)" in table.stdout

        owed = cli("node", "earnings", "--network", str(devnet_file), "--account", "host1")
        assert owed.returncode == 0, owed.stderr
        assert owed.stdout.strip() == f"{dev_account(1).address} may withdraw 0 ETH and 0 USDC"

        # leaving: the stake unbonds (still slashable) for two days, then withdraw-stake pays it out
        host1 = dev_account(1).address
        fab_before = chain.call_sync(market.stake_token.functions.balanceOf(host1))
        left = cli("node", "unregister", "--network", str(devnet_file), "--account", "host1", "--json")
        assert left.returncode == 0, left.stderr
        record = json.loads(left.stdout.strip().splitlines()[-1])
        assert record["stake"] == 1000 * 10**18 and record["stake_returned"] == 0 and record["unbonding_until"] > 0
        early = cli("node", "withdraw-stake", "--network", str(devnet_file), "--account", "host1")
        assert early.returncode == 1 and "Stake still unbonding" in early.stderr
        asyncio.run(chain.advance_time(2 * 86_400))
        paid = cli("node", "withdraw-stake", "--network", str(devnet_file), "--account", "host1")
        assert paid.returncode == 0, paid.stderr
        assert paid.stdout.strip() == f"withdrew the unbonded stake of 1000 FAB to {host1}"
        assert chain.call_sync(market.stake_token.functions.balanceOf(host1)) == fab_before + 1000 * 10**18

        # a second devnet on the same port: one clear line, nothing started
        code, out, err = in_process(capsys, "devnet", "up", "--file", str(tmp_path / "second.json"),
                                    "--port", str(network.anvil_port))
        assert code == 1 and out == ""
        assert err.splitlines() == [
            f"error: PORT_IN_USE: port {network.anvil_port} on 127.0.0.1 is already in use; pick another with --port"]
        assert not (tmp_path / "second.json").exists()
        # and the same file again: refused while its anvil runs
        code, out, err = in_process(capsys, "devnet", "up", "--file", str(devnet_file))
        assert code == 1 and err.startswith("error: DEVNET_RUNNING: ") and len(err.splitlines()) == 1
    finally:
        chain.close()

    down = cli("devnet", "down", "--file", str(devnet_file))
    assert down.returncode == 0, down.stderr
    assert f"stopped anvil (pid {pid}" in down.stdout
    assert not pid_alive(pid)
    assert devnet_file.exists() and (tmp_path / "devnet.anvil.log").exists()  # down removes nothing
    twice = cli("devnet", "down", "--file", str(devnet_file))
    assert twice.returncode == 0 and "was not running" in twice.stdout


def test_devnet_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = in_process(capsys, "devnet", "down", "--file", str(tmp_path / "nothing.json"))
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: NO_DEVNET: no network file at")

    monkeypatch.setenv("FABSTIR_ANVIL", str(tmp_path / "nope"))
    code, _, err = in_process(capsys, "devnet", "up", "--file", str(tmp_path / "x.json"))
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: ANVIL_NOT_FOUND: ") and not (tmp_path / "x.json").exists()

    not_devnet = tmp_path / "plain.json"
    not_devnet.write_text(json.dumps({"rpc_url": "http://127.0.0.1:1", "deployment": {
        "chain_id": 1, "stake_token": "0x0", "stable_token": "0x0", "model_registry": "0x0",
        "node_registry": "0x0", "host_earnings": "0x0", "proof_system": "0x0", "marketplace": "0x0"}}))
    code, _, err = in_process(capsys, "devnet", "down", "--file", str(not_devnet))
    assert code == 1 and "records no anvil PID" in err


def test_missing_anvil_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(anvil_module.ANVIL_ENV, raising=False)
    (tmp_path / "tools" / "chain").mkdir(parents=True)
    monkeypatch.setattr(anvil_module, "_search_roots", lambda: [tmp_path])
    with pytest.raises(ConfigError) as info:
        find_anvil()
    assert info.value.code == "ANVIL_NOT_FOUND"
    assert "npm ci --prefix tools/chain" in info.value.message


def test_anvil_on_loopback_free_port_and_stopped_by_pid(anvil_binary: Path) -> None:
    with start_anvil() as process:
        assert process.chain_id == 31337 and process.port > 0 and process.running
        assert process.rpc_url == f"http://127.0.0.1:{process.port}"
        assert b"--host\x00127.0.0.1\x00" in Path(f"/proc/{process.pid}/cmdline").read_bytes()
        chain = Chain.connect(process.rpc_url)
        try:
            assert chain.w3.eth.get_balance(dev_account(9).address) == 10_000 * 10**18  # same dev accounts
        finally:
            chain.close()
        with pytest.raises(ConfigError) as busy:
            start_anvil(process.port)
        assert busy.value.code == "PORT_IN_USE"
        pid = process.pid
    assert not pid_alive(pid) and not process.running
    assert stop_anvil_pid(pid) == "not running"


def test_devnet_up_brings_the_whole_marketplace_and_down_stops_it(devnet_file: Path, tmp_path: Path) -> None:
    """Anvil, a discovery service and two hosts at different prices; a client finds and pays the cheaper one;
    with ``--checkpoint-proofs`` the host's checkpoint of that session is proved and verified on chain."""
    from fabstir.cli.devnet_market import HOST_PRICES, processes_path, stop_marketplace
    from fabstir.testing.tiny_gguf import write_tiny_gguf

    pytest.importorskip("ezkl", reason="checkpoint proofs need the ezkl package (the test extra installs it)")
    model = write_tiny_gguf(tmp_path / "tiny.gguf", seed=0, context_length=512)
    zk_cache = {"FABSTIR_ZK_CACHE": str(tmp_path / "zk")}  # the hosts build the circuit's keys here, once
    try:
        up = cli("devnet", "up", "--file", str(devnet_file), "--hosts", "2", "--host-model", str(model),
                 "--dispute-window", "2", "--checkpoint-proofs", env=zk_cache, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "approved model local/tiny.gguf" in up.stdout and "discovery service http://127.0.0.1:" in up.stdout
        assert f"{HOST_PRICES[0]} wei per 1000 tokens" in up.stdout and "fabstir gateway --network" in up.stdout
        services = json.loads(processes_path(devnet_file).read_text())
        assert [s["name"] for s in services] == ["discovery", "host1", "host2"]
        assert all(pid_alive(s["pid"]) for s in services)
        network = NetworkConfig.load(devnet_file)
        listed = cli("hosts", "--network", str(devnet_file), "--model", "local/tiny.gguf", "--strategy", "cheapest",
                     "--json", timeout=120)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count('"address"') >= 2 and services[1]["url"] in listed.stdout
        chat = subprocess.run([sys.executable, "-m", "fabstir.cli", "chat", "--network", str(devnet_file), "--model",
                               "local/tiny.gguf", "--strategy", "cheapest", "--max-tokens", "5"],
                              input="hello\n", capture_output=True, text=True, timeout=180, cwd=ROOT,
                              env={**os.environ, "FABSTIR_CLIENT_KEY": network.accounts["client1"]})
        assert chat.returncode == 0, chat.stderr
        assert services[1]["url"] in chat.stderr and "[cost" in chat.stderr, "the cheaper host, paid"
        sessions = cli("sessions", "--network", str(devnet_file), "--account", "client1", "--json")
        assert sessions.returncode == 0, sessions.stderr
        (job,) = [row["job_id"] for row in json.loads(sessions.stdout)]
        deadline = time.monotonic() + 240
        while True:  # the host proves the checkpoint it claimed when the chat left, then submits the proof
            listed = cli("proofs", str(job), "--network", str(devnet_file), "--json")
            assert listed.returncode == 0, listed.stderr
            proofs = json.loads(listed.stdout)
            if proofs or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert proofs and all(p["verified"] and p["job_id"] == job for p in proofs), proofs
    finally:
        down = cli("devnet", "down", "--file", str(devnet_file))
        stop_marketplace(devnet_file)  # safety net when the test failed before down
    assert down.returncode == 0, down.stderr
    assert "host1 (pid" in down.stdout and "stopped anvil" in down.stdout
    assert not any(pid_alive(s["pid"]) for s in services)
