"""``fabstir chat --network``: a paid session through discovery from the command line, its cost shown as it goes.

anvil, one registered host (``fabstir node serve`` in its own process), the chat as a real subprocess with the
client's key in its environment; the job settles when the chat ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from fabstir.chain.anvil import AnvilProcess
from fabstir.chain.backend import Chain
from fabstir.chain.network import NetworkConfig
from fabstir.testing.tiny_gguf import write_tiny_gguf
from tests.anvil.conftest import wait_completed
from tests.paid.conftest import HOST_PRICE_NATIVE, build_world, register
from tests.processes import NodeProcess


async def test_paid_chat_shows_cost_and_settles(anvil: AnvilProcess, anvil_chain: Chain, tmp_path: Path,
                                                node_processes: list[NodeProcess]) -> None:
    async with asyncio.timeout(300):
        model = write_tiny_gguf(tmp_path / "chat.gguf", seed=0, context_length=512)
        world = await build_world(anvil_chain, model.name)
        network = tmp_path / "network.json"
        NetworkConfig(name="anvil", rpc_url=anvil.rpc_url, deployment=world.market.deployment).save(network)
        host = NodeProcess.start(model, tmp_path / "host", "host", network=network, host_key=world.host.key.hex())
        node_processes.append(host)
        await register(world, await host.url())
        chat = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fabstir.cli", "chat", "--network", str(network), "--model",
            f"local/{model.name}", "--deposit", str(10**15), "--max-tokens", "12", "--temperature", "0",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "FABSTIR_CLIENT_KEY": world.client.key.hex()})
        out, err = await chat.communicate(b"hello there\nand again\n")
        report = err.decode()
        assert chat.returncode == 0, report
        costs = [int(c) for c in re.findall(r"\[cost (\d+) wei for 12 tokens", report)]
        assert costs == [12 * HOST_PRICE_NATIVE // 1000] * 2, report
        assert f"session total {sum(costs)} wei" in report and "session closed" in report
        job_id = int(re.search(r"paid session (\d+) with", report).group(1))  # type: ignore[union-attr]
        job = await wait_completed(world, job_id)
        listed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fabstir.cli", "sessions", "--network", str(network), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "FABSTIR_CLIENT_KEY": world.client.key.hex()})
        sessions_out, sessions_err = await listed.communicate()
        spent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fabstir.cli", "spend", "--network", str(network), "--depositor",
            world.client.address, "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        spend_out, spend_err = await spent.communicate()
    assert job.depositor == world.client.address and job.tokens_used >= 24
    assert listed.returncode == 0, sessions_err.decode()
    (row,) = json.loads(sessions_out)
    assert (row["job_id"], row["status"], row["tokens_used"]) == (job_id, "completed", job.tokens_used)
    assert row["cost"] == job.tokens_used * HOST_PRICE_NATIVE // 1000 and row["refund"] == row["deposit"] - row["cost"]
    assert spent.returncode == 0, spend_err.decode()
    assert json.loads(spend_out)["total"] == {"ETH": row["cost"]}
