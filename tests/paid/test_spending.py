"""``sdk.sessions.list_sessions()`` and ``spend()`` on the embedded chain: a depositor's jobs and their cost."""

from __future__ import annotations

from fabstir.chain.money import token_cost
from fabstir.sdk import FabstirSDK
from fabstir.sdk.spending import summarize_sessions
from tests.paid.conftest import HOST_PRICE_NATIVE, PaidWorld, register

DEPOSIT = 10**15


async def test_sessions_and_spend_from_the_chain(world: PaidWorld) -> None:
    await register(world, "http://127.0.0.1:9")
    async with FabstirSDK(chain=world.chain, deployment=world.market.deployment, account=world.client) as sdk:
        first = await sdk.sessions.create_session(world.host.address, world.model, DEPOSIT, HOST_PRICE_NATIVE)
        second = await sdk.sessions.create_session(world.host.address, world.model, 2 * DEPOSIT, HOST_PRICE_NATIVE)
        settled = await sdk.sessions.complete_session(first.job_id)  # the depositor may settle at once
        mine = await sdk.sessions.list_sessions()
        theirs = await sdk.sessions.list_sessions(world.stranger.address)
        spending = await sdk.sessions.spend()
    assert [s.job_id for s in mine] == [first.job_id, second.job_id] and theirs == []
    done, active = mine
    assert done.status == "completed" and done.refund == DEPOSIT - done.cost and done.tokens_used == settled.tokens_used
    assert done.cost == token_cost(settled.tokens_used, HOST_PRICE_NATIVE)
    assert active.status == "active" and active.refund is None and active.deposit == 2 * DEPOSIT
    assert active.host == world.host.address and active.model == "0x" + world.model.hex()
    assert spending.sessions == 2 and spending.total == {"ETH": done.cost + active.cost}
    assert spending.by_host == {world.host.address: {"ETH": done.cost + active.cost}}
    assert list(spending.by_model) == ["0x" + world.model.hex()] and len(spending.by_day) == 1


def test_totals_keep_payment_tokens_apart() -> None:
    from fabstir.sdk.spending import SessionSummary

    eth = SessionSummary(1, "0xh", "0xm", "completed", None, 100, 1000, 10, 10, 90, 86_400)
    usdc = SessionSummary(2, "0xh", "0xm", "active", "0xusdc", 100, 2000, 5, 10, None, 2 * 86_400)
    spending = summarize_sessions([eth, usdc])
    assert spending.total == {"ETH": 10, "0xusdc": 10} and spending.tokens == {"ETH": 10, "0xusdc": 5}
    assert spending.by_day == {"1970-01-02": {"ETH": 10}, "1970-01-03": {"0xusdc": 10}}
