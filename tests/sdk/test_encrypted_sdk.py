"""The SDK in end-to-end encrypted mode, against a real node (tiny model) and against scripted hosts."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import coincurve
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from fabstir.errors import ConfigError, NodeError
from fabstir.node import ws as node_ws
from fabstir.node.server import NodeServer
from fabstir.protocol import ChatTurn, SessionState
from fabstir.protocol.e2e import E2EError, ServerE2ESession, open_encrypted_session_init
from fabstir.sdk import FabstirSDK, PromptOptions, RetryPolicy
from fabstir.sdk import e2e as sdk_e2e
from tests.conftest import NodeFactory

GREEDY = PromptOptions(max_tokens=8, temperature=0.0)
HOST_KEY = "0x" + "5a" * 32


class Wiretap:
    """Every frame the node received and sent, as text."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.sent: list[str] = []

    def types(self, frames: list[str]) -> list[str]:
        return [json.loads(f)["type"] for f in frames]

    @property
    def everything(self) -> str:
        return "\n".join(self.received + self.sent)


@pytest.fixture
def wiretap(monkeypatch: pytest.MonkeyPatch) -> Wiretap:
    tap = Wiretap()
    on_frame, write = node_ws.WebSocketConnection.on_frame, node_ws.WebSocketConnection.write

    async def tapped_on_frame(self: node_ws.WebSocketConnection, data: str | bytes) -> None:
        tap.received.append(data if isinstance(data, str) else repr(data))
        await on_frame(self, data)

    async def tapped_write(self: node_ws.WebSocketConnection, text: str) -> None:
        tap.sent.append(text)
        await write(self, text)

    monkeypatch.setattr(node_ws.WebSocketConnection, "on_frame", tapped_on_frame)
    monkeypatch.setattr(node_ws.WebSocketConnection, "write", tapped_write)
    return tap


async def test_encrypted_by_default_when_the_key_is_known(node: NodeServer, wiretap: Wiretap) -> None:
    key = node.runtime.e2e_public_key
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("e1", node.url, job_id=139, host_public_key=key,
                                               host_signing_key=node.runtime.signing_public_key)
        assert sdk.inference.is_encrypted()
        results = [await sdk.inference.send_prompt(f"secret question {i}") for i in range(3)]
        assert [r.message_index for r in results] == [0, 1, 2]
        prompt_tokens = [r.usage.prompt_tokens for r in results if r.usage]
        assert prompt_tokens[0] < prompt_tokens[1] < prompt_tokens[2], "the node kept the history"
        assert all(r.receipt is not None and r.completion_tokens == 8 for r in results)
        assert all(r.ttft_ms is not None and r.tokens_per_s > 0 for r in results)
        address = sdk.inference.client_address()
        assert address is not None and address.startswith("0x")
        history = sdk.inference.get_conversation()
    session = node.runtime.sessions.find("e1")
    assert session is not None and session.history == history
    assert "secret question" not in wiretap.everything
    assert all(r.text not in wiretap.everything for r in results)
    received = wiretap.types(wiretap.received)
    assert received == ["encrypted_session_init", "encrypted_message"] + ["encrypted_session_init",
                                                                          "encrypted_message"] * 2
    assert {"encrypted_chunk", "encrypted_response", "stream_end"} <= set(wiretap.types(wiretap.sent))
    assert "stream_chunk" not in wiretap.types(wiretap.sent)

    async with FabstirSDK(default_options=GREEDY) as plain:  # same node, plaintext: the same answers
        await plain.inference.connect_to_session("p1", node.url, job_id=140)
        assert not plain.inference.is_encrypted()
        twins = [await plain.inference.send_prompt(f"secret question {i}") for i in range(3)]
    assert [t.text for t in twins] == [r.text for r in results]
    assert [t.usage for t in twins] == [r.usage for r in results]


async def test_account_signs_the_init(node: NodeServer) -> None:
    from fabstir.chain.backend import dev_account

    account = dev_account(1)
    async with FabstirSDK(default_options=GREEDY, account=account) as sdk:
        await sdk.inference.connect_to_session("acct", node.url, host_public_key=node.runtime.e2e_public_key)
        assert sdk.inference.client_address() == account.address.lower()
        await sdk.inference.send_prompt("hi")
        assert sdk.inference.client_address() == account.address.lower()


async def test_key_choice(node_factory: NodeFactory) -> None:
    node: NodeServer = await node_factory()
    key = node.runtime.e2e_public_key
    uncompressed = coincurve.PublicKey(bytes.fromhex(key)).format(compressed=False).hex()
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("a", node.url)
        assert not sdk.inference.is_encrypted(), "no key given: plaintext unless encryption=True"
        await sdk.inference.connect_to_session("b", node.url, encryption=True)
        assert sdk.inference.is_encrypted(), "encryption=True trusts the key the node announces"
        assert (await sdk.inference.send_prompt("hi", session_id="b")).finish_reason == "length"
        await sdk.inference.connect_to_session("c", node.url, host_public_key="0x" + uncompressed)
        assert sdk.inference.is_encrypted()
        await sdk.inference.connect_to_session("d", node.url, host_public_key=key, encryption=False)
        assert not sdk.inference.is_encrypted()
        other = coincurve.PrivateKey(b"\x07" * 32).public_key.format().hex()
        with pytest.raises(E2EError) as mismatch:
            await sdk.inference.connect_to_session("e", node.url, host_public_key=other)
        assert mismatch.value.code == "HOST_KEY_MISMATCH"
        with pytest.raises(ConfigError) as malformed:
            await sdk.inference.connect_to_session("f", node.url, host_public_key="02abcd")
        assert malformed.value.code == "INVALID_HOST_KEY"
    async with FabstirSDK(default_options=GREEDY, encryption=True) as strict:
        await strict.inference.connect_to_session("g", node.url)
        assert strict.inference.is_encrypted()


async def test_public_subset_node(node_factory: NodeFactory) -> None:
    node: NodeServer = await node_factory(extensions=False)
    async with FabstirSDK(default_options=GREEDY) as sdk:
        with pytest.raises(ConfigError) as unknown:
            await sdk.inference.connect_to_session("x", node.url, encryption=True)
        assert unknown.value.code == "HOST_KEY_UNKNOWN", "the public node announces no key"
        await sdk.inference.connect_to_session("pub", node.url, job_id=7, host_public_key=node.runtime.e2e_public_key)
        assert sdk.inference.is_encrypted()
        first = await sdk.inference.send_prompt("first")
        second = await sdk.inference.send_prompt("second")
        assert first.receipt is None and first.message_index is None
        assert second.usage and first.usage and second.usage.prompt_tokens > first.usage.prompt_tokens
        # a restored conversation travels inside the (encrypted) first prompt
        history = [ChatTurn("user", "my name is Ada"), ChatTurn("assistant", "hello Ada")]
        await sdk.inference.connect_to_session("restored", node.url, job_id=8, conversation_context=history,
                                               host_public_key=node.runtime.e2e_public_key)
        await sdk.inference.connect_to_session("bare", node.url, job_id=9, host_public_key=node.runtime.e2e_public_key)
        restored = await sdk.inference.send_prompt("what is my name", session_id="restored")
        bare = await sdk.inference.send_prompt("what is my name", session_id="bare")
        assert restored.usage and bare.usage and restored.usage.prompt_tokens > bare.usage.prompt_tokens
        assert sdk.inference.get_conversation("restored")[2] == ChatTurn("user", "what is my name")
        stored = node.runtime.sessions.find("restored")
        assert stored is not None and "my name is Ada" in stored.history[0].content


async def test_falls_back_to_plaintext_only_when_allowed(node_factory: NodeFactory,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    node: NodeServer = await node_factory(encryption=False, extensions=False)
    key = coincurve.PrivateKey(b"\x05" * 32).public_key.format().hex()
    async with FabstirSDK(default_options=GREEDY) as sdk:
        with caplog.at_level(logging.WARNING, logger="fabstir.sdk"):
            await sdk.inference.connect_to_session("fb", node.url, host_public_key=key)
        assert not sdk.inference.is_encrypted() and "does not support end-to-end encryption" in caplog.text
        assert (await sdk.inference.send_prompt("plain now")).finish_reason == "length"
        with pytest.raises(NodeError) as refused:
            await sdk.inference.connect_to_session("strict", node.url, host_public_key=key, encryption=True)
        assert refused.value.code == "ENCRYPTION_NOT_SUPPORTED"


async def test_cancel_mid_stream(node: NodeServer) -> None:
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("c", node.url, host_public_key=node.runtime.e2e_public_key)
        stream = sdk.inference.stream("go on", PromptOptions(max_tokens=400, temperature=0.0))
        async for _ in stream:
            await sdk.inference.cancel()
        assert stream.result.cancelled and 1 <= stream.result.completion_tokens < 400
        assert stream.result.receipt is not None
        assert sdk.inference.session_state() is SessionState.READY
        after = await sdk.inference.send_prompt("next", GREEDY)
        assert after.finish_reason == "length" and after.message_index == 1


async def test_resume_is_encrypted(node: NodeServer, wiretap: Wiretap) -> None:
    history = [ChatTurn("user", "my secret name is Ada"), ChatTurn("assistant", "hello Ada"),
               ChatTurn("user", "what is my secret name"), ChatTurn("assistant", "Ada")]
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("res", node.url, job_id=2, conversation_context=history,
                                               host_public_key=node.runtime.e2e_public_key)
        resumed = await sdk.inference.send_prompt("next")
    assert resumed.message_index == 2
    session = node.runtime.sessions.find("res")
    assert session is not None and session.history[:4] == history
    assert "secret name" not in wiretap.everything
    assert wiretap.types(wiretap.received)[:2] == ["encrypted_session_init", "session_resume"]


async def test_large_prompts_are_compressed_before_encryption(node_factory: NodeFactory, wiretap: Wiretap) -> None:
    node: NodeServer = await node_factory(context_window=2048)
    long_prompt = "please summarise: " + "the quick brown fox jumps over the lazy dog. " * 30
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("zip", node.url, host_public_key=node.runtime.e2e_public_key)
        zipped = await sdk.inference.send_prompt(long_prompt)
    message = next(json.loads(f) for f in wiretap.received if '"encrypted_message"' in f)
    sealed = len(message["payload"]["ciphertextHex"]) // 2
    assert sealed < len(long_prompt) // 4, "the inner JSON was compressed"
    async with FabstirSDK(default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("zip2", node.url)
        plain = await sdk.inference.send_prompt(long_prompt)
    assert zipped.text == plain.text and zipped.usage == plain.usage


async def test_reconnects_after_node_restart(node_factory: NodeFactory) -> None:
    first: NodeServer = await node_factory(host_key=HOST_KEY)
    port, key = first.port, first.runtime.e2e_public_key
    async with FabstirSDK(default_options=GREEDY, retry=RetryPolicy(attempts=20, initial_delay=0.05,
                                                                     max_delay=0.2)) as sdk:
        await sdk.inference.connect_to_session("crash", first.url, job_id=3, host_public_key=key)
        before = [await sdk.inference.send_prompt(f"turn {i}") for i in range(2)]
        await first.aclose()
        second: NodeServer = await node_factory(port=port, host_key=HOST_KEY)
        after = await sdk.inference.send_prompt("after the crash")
        assert sdk.inference.is_encrypted() and after.message_index == 2
        restored = second.runtime.sessions.find("crash")
        assert restored is not None and restored.history[:4] == sdk.inference.get_conversation()[:4]
        assert after.usage and before[1].usage and after.usage.prompt_tokens > before[1].usage.prompt_tokens


async def test_index_conflict_is_repaired_in_encrypted_mode(node: NodeServer) -> None:
    key = node.runtime.e2e_public_key
    async with FabstirSDK(default_options=GREEDY) as first, FabstirSDK(default_options=GREEDY) as second:
        await first.inference.connect_to_session("shared", node.url, host_public_key=key)
        await second.inference.connect_to_session("shared", node.url, host_public_key=key)
        await first.inference.send_prompt("from the first client")
        result = await second.inference.send_prompt("from the second client")
        assert result.message_index == 0
        assert (await second.inference.send_prompt("again")).message_index == 1


# --- scripted hosts: what a real node never does --------------------------------------------------

HostScript = Callable[[ServerConnection, ServerE2ESession, dict[str, Any]], Awaitable[None]]
SCRIPTED_KEY = b"\x42" * 32
SCRIPTED_PUB = coincurve.PrivateKey(SCRIPTED_KEY).public_key.format().hex()


@pytest.fixture
async def scripted_e2e_host() -> AsyncIterator[Callable[[HostScript], Awaitable[str]]]:
    servers: list[Server] = []

    async def start(script: HostScript) -> str:
        async def handler(ws: ServerConnection) -> None:
            await ws.send(json.dumps({"type": "connected", "message": "WebSocket connected successfully"}))
            session: ServerE2ESession | None = None
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "encrypted_session_init":
                    opened = open_encrypted_session_init(frame["payload"], SCRIPTED_KEY)
                    session = ServerE2ESession.from_init(opened)
                    await ws.send(json.dumps({"type": "session_init_ack", "status": "success",
                                              "session_id": frame["session_id"], "job_id": None, "chain_id": None,
                                              "client_address": opened.client_address, "message": "ok",
                                              "id": frame.get("id")}))
                elif frame["type"] == "encrypted_message" and session is not None:
                    json.loads(session.decrypt_message(frame["payload"]))
                    await script(ws, session, frame)

        server = await serve(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_finishes_after_final_without_stream_end(scripted_e2e_host: Callable[[HostScript], Awaitable[str]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_stream_end(ws: ServerConnection, session: ServerE2ESession, frame: dict[str, Any]) -> None:
        for text in ("Hello", " world", ""):
            await ws.send(json.dumps({"type": "encrypted_chunk", "tokens": 1 if text else 0, "id": frame["id"],
                                      "payload": session.encrypt_chunk(text), **({"final": True} if not text else {})}))
        await ws.send(json.dumps({"type": "encrypted_response", "id": frame["id"],
                                  "payload": session.encrypt_response_final("stop")}))

    monkeypatch.setattr(sdk_e2e, "END_GRACE_S", 0.2)
    url = await scripted_e2e_host(no_stream_end)
    async with FabstirSDK() as sdk:
        await sdk.inference.connect_to_session("1", url, host_public_key=SCRIPTED_PUB)
        started = asyncio.get_running_loop().time()
        result = await sdk.inference.send_prompt("hi")
        assert asyncio.get_running_loop().time() - started < 2
        assert result.text == "Hello world" and result.finish_reason == "stop" and result.tokens_used == 2
        again = await sdk.inference.send_prompt("again")  # a fresh init per prompt
        assert again.text == "Hello world"


async def test_a_chunk_that_does_not_decrypt_is_an_error(scripted_e2e_host: Callable[[HostScript], Awaitable[str]]
                                                         ) -> None:
    async def tampering(ws: ServerConnection, session: ServerE2ESession, frame: dict[str, Any]) -> None:
        good = session.encrypt_chunk("fine")
        await ws.send(json.dumps({"type": "encrypted_chunk", "tokens": 1, "id": frame["id"], "payload": good}))
        bad = session.encrypt_chunk("evil")
        bad["ciphertextHex"] = ("00" if bad["ciphertextHex"][:2] != "00" else "11") + bad["ciphertextHex"][2:]
        await ws.send(json.dumps({"type": "encrypted_chunk", "tokens": 1, "id": frame["id"], "payload": bad}))
        await ws.wait_closed()

    url = await scripted_e2e_host(tampering)
    async with FabstirSDK(retry=RetryPolicy(attempts=0)) as sdk:
        await sdk.inference.connect_to_session("1", url, host_public_key=SCRIPTED_PUB)
        pieces: list[str] = []
        with pytest.raises(E2EError) as info:
            await sdk.inference.send_prompt("hi", on_token=pieces.append)
        assert info.value.code == "DECRYPTION_FAILED" and pieces == ["fine"]
        assert sdk.inference.get_conversation() == []


async def test_signed_and_encrypted(node_factory: NodeFactory) -> None:
    from nacl.signing import SigningKey

    node: NodeServer = await node_factory(require_signed_messages=True)
    async with FabstirSDK(signing_key=SigningKey(b"\x03" * 32), default_options=GREEDY) as sdk:
        await sdk.inference.connect_to_session("signed", node.url, host_public_key=node.runtime.e2e_public_key)
        assert (await sdk.inference.send_prompt("one")).completion_tokens == 8
        assert (await sdk.inference.send_prompt("two")).message_index == 1
