"""Ed25519-signed client messages on a real node: accepted, replayed, stale, tampered, required."""

from __future__ import annotations

import json
import time

from nacl.signing import SigningKey

from fabstir.protocol.signing import sign_message
from fabstir.sdk import FabstirSDK, PromptOptions
from tests.conftest import NodeFactory
from tests.helpers import WireClient, prompt

KEY = SigningKey(b"\x05" * 32)


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_signed_messages_and_attacks(node_factory: NodeFactory) -> None:
    node = await node_factory(require_signed_messages=True)
    client = await WireClient.open(node.ws_url)
    signed = sign_message(prompt("hello", rid="ok", max_tokens=2), KEY, now_ms())
    await client.send(json.dumps(signed))
    assert (await client.until_end())[-1]["reason"] == "complete"
    attacks = {
        "REPLAYED_NONCE": signed,
        "STALE_TIMESTAMP": sign_message(prompt("old", rid="stale", max_tokens=2), KEY, now_ms() - 120_000),
        "SIGNATURE_INVALID": {**sign_message(prompt("x", rid="tamper", max_tokens=2), KEY, now_ms()),
                              "prompt": "changed after signing"},
        "SIGNATURE_REQUIRED": prompt("unsigned", rid="unsigned", max_tokens=2),
    }
    for expected, frame in attacks.items():
        await client.send(json.dumps(frame))
        error, end = await client.recv(), await client.recv()
        assert error["code"] == expected and end["reason"] == "error" and end["id"] == frame["id"]
    sessions = list(node.runtime.sessions._sessions.values())
    assert len(sessions) == 1 and sessions[0].next_index == 1, "only the genuine prompt was served"
    await client.close()


async def test_sdk_signs_when_given_a_key(node_factory: NodeFactory) -> None:
    node = await node_factory(require_signed_messages=True)
    async with FabstirSDK(signing_key=KEY, default_options=PromptOptions(max_tokens=3, temperature=0.0)) as sdk:
        await sdk.inference.connect_to_session("signed", node.url)
        assert (await sdk.inference.send_prompt("hi")).completion_tokens == 3
