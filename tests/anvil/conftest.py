"""Fixtures on a real anvil (127.0.0.1, a free port), started by the tests and always stopped.

Anvil comes from ``npm ci --prefix tools/chain`` (``scripts/test.sh`` runs it). When it is missing
these tests fail, with the command to run: CI installs it, so a silent skip would hide a broken setup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fabstir.chain.anvil import AnvilProcess, find_anvil, running_anvil
from fabstir.chain.backend import Chain
from fabstir.chain.records import JobStatus, SessionJob
from fabstir.errors import ConfigError
from fabstir.sdk import FabstirSDK
from tests.paid.conftest import PaidWorld, build_world


@pytest.fixture(scope="session")
def anvil_binary() -> Path:
    try:
        return find_anvil()
    except ConfigError as exc:
        problem = exc.message
    pytest.fail(f"these tests need anvil: {problem}", pytrace=False)


@pytest.fixture
async def anvil(anvil_binary: Path) -> AsyncIterator[AnvilProcess]:
    """A fresh anvil that mines every transaction at once and an empty block every second (as ``devnet up``)."""
    async with running_anvil(block_time=1) as process:
        yield process


@pytest.fixture
async def anvil_chain(anvil: AnvilProcess) -> AsyncIterator[Chain]:
    chain = Chain.connect(anvil.rpc_url)
    try:
        yield chain
    finally:
        chain.close()


@pytest.fixture
async def anvil_world(anvil_chain: Chain, tiny_model: Path) -> PaidWorld:
    """The paid world of tests/paid (dispute window 2 s) deployed on anvil."""
    return await build_world(anvil_chain, tiny_model.name)


async def wait_completed(world: PaidWorld, job_id: int, timeout: float = 240) -> SessionJob:
    """The job once its host settled it (chain time passes its last checkpoint and the dispute window)."""
    deadline = time.monotonic() + timeout
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment) as sdk:
        while time.monotonic() < deadline:
            job = await sdk.sessions.get_session(job_id)
            if job.status is not JobStatus.ACTIVE:
                assert job.status is JobStatus.COMPLETED
                return job
            await asyncio.sleep(0.25)
    pytest.fail(f"job {job_id} was not settled within {timeout:.0f} s")
