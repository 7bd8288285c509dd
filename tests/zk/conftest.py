"""Checkpoint-proof fixtures: the circuit's keys, built once per test session, and a marketplace that takes
checkpoint proofs (the embedded chain with the EZKL verifier deployed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fabstir.chain.backend import Chain
from fabstir.chain.checkpoint_proofs import deploy_checkpoint_verifier
from fabstir.zk.keys import CircuitKeys, ensure_keys
from tests.paid.conftest import PaidWorld, build_world

pytest.importorskip("ezkl", reason="checkpoint proofs need the ezkl package (the test extra installs it)")


@pytest.fixture(scope="session")
def zk_keys(tmp_path_factory: pytest.TempPathFactory) -> CircuitKeys:
    """The checkpoint circuit's keys, built once for the whole session (about 2 s) under a temporary folder."""
    return session_keys(tmp_path_factory)


def session_keys(tmp_path_factory: pytest.TempPathFactory) -> CircuitKeys:
    """The keys in the session's temporary folder (``ensure_keys`` builds them the first time only)."""
    return ensure_keys(tmp_path_factory.getbasetemp() / "zk-keys", progress=print)


@pytest.fixture
async def proven_world(tiny_model: Path) -> AsyncIterator[PaidWorld]:
    """The paid marketplace of tests/paid with the checkpoint verifier (Halo2Verifier + adapter) deployed."""
    chain = Chain.embedded(funded_accounts=5)
    try:
        world = await build_world(chain, tiny_model.name)
        await deploy_checkpoint_verifier(world.market, world.owner)
        yield world
    finally:
        chain.close()
