"""Chaos, paid: the serving host is killed with SIGKILL mid-answer; the SDK moves the session to the other
registered host, which continues the answer; both hosts are paid for what each served, once.

Two hosts staked and registered on anvil, each ``fabstir node serve`` in its own process with its own key,
ledger and data folder. The client opens the session through ``sdk.sessions.open_session`` (unified discovery
over the chain's registry), streams a long greedy answer and kills the host serving it. The killed host is
then restarted over its ledger and settles its job from it; the second host settles when the client closes.
Every process is stopped by PID; every wait has a generous deadline and the test a bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from fabstir.chain.anvil import AnvilProcess
from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.money import token_cost
from fabstir.chain.network import NetworkConfig
from fabstir.node.billing import FLUSH_TOKENS
from fabstir.sdk import FabstirSDK, PromptOptions, Timeouts
from fabstir.testing.tiny_gguf import write_tiny_gguf
from tests.anvil.conftest import wait_completed
from tests.paid.conftest import HOST_PRICE_NATIVE, add_host, build_world, register
from tests.processes import NodeProcess

TEST_BOUND_S = 480
ANSWER = PromptOptions(max_tokens=1500, temperature=0.0)
KILL_AFTER = 150
DEPOSIT = 10**15


@pytest.mark.parametrize("stop", ["kill", "freeze"])
async def test_paid_failover_continues_the_answer_and_pays_each_host_for_its_part(
        stop: str, anvil: AnvilProcess, anvil_chain: Chain, tmp_path: Path, node_processes: list[NodeProcess]) -> None:
    """``kill``: SIGKILL, then the host is restarted over its ledger. ``freeze``: SIGSTOP (a stall the client
    detects after ``between_frames``), then SIGCONT: the host finds the client gone and settles by itself."""
    async with asyncio.timeout(TEST_BOUND_S):
        model = write_tiny_gguf(tmp_path / "long.gguf", seed=0, context_length=4096)
        world = await build_world(anvil_chain, model.name)
        network = tmp_path / "network.json"
        NetworkConfig(name="anvil", rpc_url=anvil.rpc_url, deployment=world.market.deployment).save(network)
        second_host = dev_account(5)
        paid = ("--context-window", "4096")

        def start(name: str, key: str, folder: str) -> NodeProcess:
            node = NodeProcess.start(model, tmp_path / folder, name, network=network, host_key=key, extra=paid)
            node_processes.append(node)
            return node

        first = start("first", world.host.key.hex(), "first")
        second = start("second", second_host.key.hex(), "second")
        first_url, second_url = await first.url(), await second.url()
        await register(world, first_url)
        await add_host(world, second_host, second_url, HOST_PRICE_NATIVE)

        async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client,
                              default_options=ANSWER, timeouts=Timeouts(between_frames=3.0)) as sdk:
            opened = await sdk.sessions.open_session(world.model, DEPOSIT, host=world.host.address)
            await opened.connect()
            stopped = False
            async with sdk.inference.stream("a long story") as stream:
                async for _ in stream:
                    if stream.tokens_received >= KILL_AFTER and not session_moved(sdk) and not stopped:
                        stopped = True
                        getattr(first, stop)()
            result = stream.result
            session = sdk.inference.session()
            switch = session.switches[0]
            await opened.close()  # the second host settles its job when the socket closes

        assert result.hosts == (first_url, second_url), "the answer moved to the other registered host"
        assert sum(p.tokens for p in result.parts) == result.tokens_used == ANSWER.max_tokens, "no token lost"
        assert switch.reason == "failed" and switch.from_job == opened.job.job_id and switch.to_job is not None
        served_first, served_second = (p.tokens for p in result.parts)
        assert served_first >= KILL_AFTER
        assert switch.deposit == DEPOSIT - token_cost(served_first, HOST_PRICE_NATIVE), "the new job gets the rest"

        if stop == "kill":
            restarted = start("first-again", world.host.key.hex(), "first")  # its ledger settles the first job
            await restarted.url()
        else:
            os.kill(first.pid, signal.SIGCONT)
        first_job = await wait_completed(world, opened.job.job_id)
        second_job = await wait_completed(world, switch.to_job)

    print(f"\nfailover ({stop}): first host served {served_first} tokens (billed {first_job.tokens_used}), "
          f"second {served_second} (billed {second_job.tokens_used})")
    assert abs(first_job.tokens_used - served_first) <= FLUSH_TOKENS, "the dead host is paid from its ledger"
    assert second_job.tokens_used == served_second, "the second host is paid for the rest, exactly"
    assert first_job.host == world.host.address and second_job.host == second_host.address
    assert second_job.deposit == switch.deposit


def session_moved(sdk: FabstirSDK) -> bool:
    return bool(sdk.inference.session().switches)
