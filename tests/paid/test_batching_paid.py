"""Paid sessions served by the batching engine: token accounting, receipts, checkpoints and settlement per sequence.

The tests are the existing ones (imported here) on the embedded chain; this module's ``node_factory``
starts every node with ``engine = "llama-batch"``.
"""

from __future__ import annotations

import pytest

from tests.conftest import NodeFactory, batching_nodes
from tests.paid.test_billing_rules import (  # noqa: F401  (collected again here, against the batching engine)
    test_deposit_limits_what_is_served,
    test_long_answers_are_checkpointed_while_they_stream,
)
from tests.paid.test_paid_flow import test_full_paid_lifecycle_in_eth  # noqa: F401


@pytest.fixture
async def node_factory(node_factory: NodeFactory) -> NodeFactory:
    """The suite's node factory, with the batching engine."""
    return batching_nodes(node_factory)
