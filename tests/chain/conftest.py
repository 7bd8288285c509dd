"""Fixtures for the contract tests: one in-process chain per test session, reset after every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chain.harness import Chain, Market, deploy_market


@pytest.fixture(scope="session")
def deployed() -> Market:
    """The marketplace deployed once on a fresh eth-tester chain."""
    return deploy_market(Chain())


@pytest.fixture
def m(deployed: Market) -> Iterator[Market]:
    """The deployed marketplace; every change a test makes is rolled back afterwards."""
    with deployed.chain.snapshot():
        yield deployed
