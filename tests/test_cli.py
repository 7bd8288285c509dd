"""The ``fabstir`` command, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir.sdk import FabstirSDK, PromptOptions
from fabstir.testing.tiny_gguf import write_tiny_gguf
from tests.conftest import NodeFactory
from tests.processes import NodeProcess

FABSTIR = [sys.executable, "-m", "fabstir.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FABSTIR, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and code in errors[0], result.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def test_demo_json_summary(tiny_model: Path) -> None:
    result = run("demo", "--model", str(tiny_model), "--max-tokens", "12", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["host"].startswith("http://127.0.0.1:") and summary["model"] == "tiny"
    assert summary["turns"] == 3 and summary["completion_tokens"] > 0
    assert summary["ttft_ms"] > 0 and summary["tokens_per_s"] > 0
    assert result.stdout.count("user> ") == 3
    assert "loading model tiny.gguf" in result.stderr, "progress is shown while the model loads"
    money = {k: summary[k] for k in ("deposit", "tokens_billed", "host_earnings", "treasury_fee", "refund")}
    assert all(isinstance(v, int) for v in money.values())
    assert money["host_earnings"] + money["treasury_fee"] + money["refund"] == money["deposit"]
    assert money["tokens_billed"] == summary["tokens_served"]  # our contracts bill exactly what was served
    assert money["host_earnings"] == summary["host_earnings_on_chain"] > 0
    assert money["host_earnings"] + money["treasury_fee"] == money["tokens_billed"] * summary["price_per_token"] // 1000
    assert "receipt (job 1)" in result.stdout
    assert "Warning" not in result.stderr, result.stderr  # eth-tester's process-wide filter change is undone


def test_free_demo(tiny_model: Path) -> None:
    result = run("demo", "--free", "--model", str(tiny_model), "--max-tokens", "5", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["completion_tokens"] == 15 and "deposit" not in summary


def test_demo_missing_model() -> None:
    assert_one_line_error(run("demo", "--model", "/nonexistent/model.gguf"), "MODEL_NOT_FOUND")


def test_serve_busy_port(tiny_model: Path, busy_port: int) -> None:
    result = run("node", "serve", "--model", str(tiny_model), "--port", str(busy_port))
    assert_one_line_error(result, "PORT_IN_USE")


def test_chat_unreachable_host(busy_port: int) -> None:
    # a port that accepts TCP but never speaks WebSocket would hang; a closed one is refused at once
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    result = run("chat", "--host", f"http://127.0.0.1:{closed_port}")
    assert_one_line_error(result, "CONNECT_FAILED")


def test_bad_config_value(tiny_model: Path) -> None:
    result = subprocess.run([*FABSTIR, "node", "serve", "--model", str(tiny_model)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "FABSTIR_NODE_PORT": "eighty"})
    assert_one_line_error(result, "CONFIG_ERROR")


async def test_node_serve_and_chat(tiny_model: Path) -> None:
    process = subprocess.Popen([*FABSTIR, "node", "serve", "--model", str(tiny_model), "--port", "0",
                                "--context-window", "256", "--parallel", "1", "--threads", "1"],
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        url = None
        for line in process.stderr:
            found = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found.group(1)
                break
        assert url is not None
        async with FabstirSDK(default_options=PromptOptions(max_tokens=6, temperature=0.0)) as sdk:
            await sdk.inference.connect_to_session("cli", url)
            assert (await sdk.inference.send_prompt("hello")).completion_tokens == 6
        chat = subprocess.run([*FABSTIR, "chat", "--host", url, "--max-tokens", "5"], input="hi there\n",
                              capture_output=True, text=True, timeout=60)
        assert chat.returncode == 0, chat.stderr
        assert "5 tokens" in chat.stderr and "you> " in chat.stdout
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) in (0, 130)


# --- configuration is checked before anything slow --------------------------------------------------------------

BAD_NETWORK = '{"rpc_url": 5, "deployment": []}'


def test_bad_host_key_is_refused_before_the_model_loads(tiny_model: Path) -> None:
    result = subprocess.run([*FABSTIR, "node", "serve", "--model", str(tiny_model), "--port", "0"],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env={**os.environ, "FABSTIR_NODE_HOST_KEY": "0xzz"})
    assert_one_line_error(result, "INVALID_HOST_KEY")
    assert "loading model" not in result.stderr and "zz" not in result.stderr.replace("0xzz", "")


def test_network_file_of_the_wrong_shape_is_one_coded_line(tmp_path: Path, tiny_model: Path) -> None:
    network = tmp_path / "bad.json"
    network.write_text(BAD_NETWORK, encoding="utf-8")
    assert_one_line_error(run("hosts", "--network", str(network)), "INVALID_NETWORK_FILE")
    served = subprocess.run([*FABSTIR, "node", "serve", "--model", str(tiny_model), "--port", "0", "--network",
                             str(network)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env={**os.environ, "FABSTIR_NODE_HOST_KEY": "0x" + "ab" * 32})
    assert_one_line_error(served, "INVALID_NETWORK_FILE")
    assert "loading model" not in served.stderr, "the network file is checked before the model loads"
    assert_one_line_error(run("node", "earnings", "--network", str(network), "--key", "0x" + "ab" * 32),
                          "INVALID_NETWORK_FILE")


def test_paid_node_without_host_key_is_refused_before_the_model_loads(tmp_path: Path, tiny_model: Path) -> None:
    network = tmp_path / "net.json"
    network.write_text(json.dumps({"rpc_url": "http://127.0.0.1:9", "chain_id": 31337, "deployment": {}}),
                       encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "FABSTIR_NODE_HOST_KEY"}
    result = subprocess.run([*FABSTIR, "node", "serve", "--model", str(tiny_model), "--port", "0", "--network",
                             str(network)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env=env)
    assert_one_line_error(result, "HOST_KEY_REQUIRED")
    assert "loading model" not in result.stderr


def test_host_command_refuses_a_bad_key_before_connecting(tmp_path: Path) -> None:
    network = tmp_path / "net.json"  # its chain is a closed port: connecting would fail with another error
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    deployment = {name: "0x" + "11" * 20 for name in ("stake_token", "stable_token", "model_registry",
                                                      "node_registry", "host_earnings", "proof_system",
                                                      "marketplace")}
    network.write_text(json.dumps({"rpc_url": f"http://127.0.0.1:{closed}", "chain_id": 31337,
                                   "deployment": deployment}), encoding="utf-8")
    assert_one_line_error(run("node", "earnings", "--network", str(network), "--key", "0xzz"), "INVALID_HOST_KEY")


async def test_chat_survives_killing_its_host(tmp_path: Path, node_factory: NodeFactory,
                                              node_processes: list[NodeProcess]) -> None:
    """``fabstir chat --fallback-host``: its host (a real process) is SIGKILLed mid-answer; the answer goes on."""
    model = write_tiny_gguf(tmp_path / "long.gguf", seed=0, context_length=2048)
    fallback = await node_factory(model_path=str(model), context_window=2048, parallel=1)
    victim = NodeProcess.start(model, tmp_path / "a", "a", extra=("--context-window", "2048"))
    node_processes.append(victim)
    url = await victim.url()
    chat = await asyncio.create_subprocess_exec(
        *FABSTIR, "chat", "--host", url, "--fallback-host", fallback.url, "--max-tokens", "1200",
        "--temperature", "0", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(180):
            assert chat.stdin is not None and chat.stdout is not None
            chat.stdin.write(b"tell me everything\n")
            await chat.stdin.drain()
            shown = await chat.stdout.readexactly(len("you> ") + 200)  # the answer is streaming
            victim.kill()
            chat.stdin.close()
            rest, errors = await chat.communicate()
    finally:
        if chat.returncode is None:
            chat.kill()
            await chat.wait()
    assert chat.returncode == 0, errors.decode()
    report = errors.decode()
    assert f"{url} stopped answering after token" in report and f"{fallback.url} continued" in report
    assert "[1200 tokens, length" in report, report
    assert len(shown + rest) > 200
