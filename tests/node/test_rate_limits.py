"""Rate limits: token buckets per client and per session, over WebSocket and HTTP."""

from __future__ import annotations

import httpx

from fabstir.node.ratelimit import RateLimiter
from fabstir.node.server import NodeServer
from fabstir.sdk import FabstirSDK, PromptOptions, RetryPolicy
from tests.conftest import NodeFactory
from tests.helpers import WireClient, prompt


def test_buckets_refill_and_are_separate() -> None:
    now = [0.0]
    limiter = RateLimiter(client_per_minute=60, client_burst=2, session_per_minute=30, session_burst=1,
                          clock=lambda: now[0])
    assert limiter.check("a", "s1") == 0.0
    assert limiter.check("a", "s1") == 2.0, "session bucket empty: one token per 2 s"
    assert limiter.check("b", "s2") == 0.0, "another client and session are unaffected"
    assert limiter.check("a", "s3") == 1.0, "client a spent its burst of 2"
    now[0] = 1.0
    assert limiter.check("a", "s3") == 0.0
    unlimited = RateLimiter(client_per_minute=0, client_burst=1, session_per_minute=0, session_burst=1)
    assert all(unlimited.check("x", "y") == 0.0 for _ in range(1000))


async def test_flood_is_refused_with_retry_after_and_others_keep_working(node_factory: NodeFactory) -> None:
    # 2 a minute: the bucket cannot refill while the test runs, however slow the machine
    node: NodeServer = await node_factory(session_rate_limit_per_minute=2, session_rate_limit_burst=3)
    flooder, other = await WireClient.open(node.ws_url), await WireClient.open(node.ws_url)
    await flooder.init("flood")
    await other.init("calm")
    codes = []
    for i in range(5):
        await flooder.send(prompt("again", rid=f"f{i}", max_tokens=2))
        frames = await flooder.until_end()
        codes.append(frames[-1]["reason"])
        if frames[-1]["reason"] == "error":
            error = frames[0]
            assert error["code"] == "RATE_LIMITED" and 0 < error["retry_after"] <= 30.0
    assert codes == ["complete"] * 3 + ["error"] * 2
    await other.send(prompt("hello", rid="o", max_tokens=2))
    assert (await other.until_end())[-1]["reason"] == "complete"
    session = node.runtime.sessions.find("flood")
    assert session is not None and session.next_index == 3, "refused prompts are not recorded"
    await flooder.close()
    await other.close()


async def test_http_429_with_retry_after(node_factory: NodeFactory) -> None:
    node: NodeServer = await node_factory(rate_limit_per_minute=2, rate_limit_burst=1)  # no refill in the test
    async with httpx.AsyncClient(base_url=node.url) as client:
        body = {"prompt": "x", "max_tokens": 2, "temperature": 0}
        assert (await client.post("/v1/inference", json=body)).status_code == 200
        refused = await client.post("/v1/inference", json=body)
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 30
        assert refused.json()["details"]["code"] == "RATE_LIMITED"


async def test_sdk_waits_and_retries(node_factory: NodeFactory) -> None:
    node: NodeServer = await node_factory(session_rate_limit_per_minute=600, session_rate_limit_burst=1)
    async with FabstirSDK(retry=RetryPolicy(attempts=3, max_delay=1.0),
                          default_options=PromptOptions(max_tokens=2, temperature=0.0)) as sdk:
        await sdk.inference.connect_to_session("patient", node.url)
        results = [await sdk.inference.send_prompt(f"q{i}") for i in range(3)]
    assert [r.message_index for r in results] == [0, 1, 2]
