"""A raw encrypted wire client: the public Fabstir SDK's flow, built from the sans-I/O e2e core only."""

from __future__ import annotations

import json
import os
from typing import Any

import coincurve
from websockets.asyncio.client import connect

from fabstir.protocol.e2e import (
    ClientE2ESession,
    SessionInitPayload,
    SignatureScheme,
    address_of,
    build_encrypted_session_init,
    encrypt_message_payload,
)
from tests.helpers import WireClient

CLIENT_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
CLIENT_ADDRESS = address_of(coincurve.PrivateKey(CLIENT_KEY).public_key.format())


class E2EWire:
    """One socket speaking the encrypted protocol as the TS SDK does (init → message_n → chunks)."""

    def __init__(self, wire: WireClient, host_public_key: str, client_key: bytes = CLIENT_KEY,
                 hello: dict[str, Any] | None = None) -> None:
        self.wire = wire
        self.hello = hello or {}
        self.host_public_key = host_public_key
        self.client_key = client_key
        self.e2e = ClientE2ESession()
        self.session_id = ""
        self.last_init: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, host_public_key: str | None = None, *, client_key: bytes = CLIENT_KEY,
                   **kwargs: Any) -> E2EWire:
        """Connect; ``client_key`` signs the inits (a paid node serves only its depositor's)."""
        wire = WireClient(await connect(url, **kwargs))
        hello = await wire.recv()
        assert hello["type"] == "connected", hello
        return cls(wire, host_public_key or hello["public_key"], client_key, hello=hello)

    def init_frame(self, session_id: str, job_id: str | None = None, *, rid: str = "init", outer_job: Any = None,
                   scheme: SignatureScheme = "ciphertext", chain_id: int | None = 84532) -> dict[str, Any]:
        """A fresh ``encrypted_session_init`` (new session key, message index 0)."""
        self.e2e = ClientE2ESession()
        self.session_id = session_id
        init = SessionInitPayload(job_id=job_id if job_id is not None else session_id, model_name="tiny",
                                  session_key=self.e2e.session_key, price_per_token=2000)
        frame: dict[str, Any] = {"type": "encrypted_session_init", "session_id": session_id,
                                 "payload": build_encrypted_session_init(self.host_public_key, init, self.client_key,
                                                                         signature_scheme=scheme),
                                 "id": rid}
        if outer_job is not None:
            frame["job_id"] = outer_job
        if chain_id is not None:
            frame["chain_id"] = chain_id
        self.last_init = frame
        return frame

    async def init(self, session_id: str, job_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        await self.wire.send(self.init_frame(session_id, job_id, **kwargs))
        ack = await self.wire.recv()
        assert ack["type"] == "session_init_ack", ack
        return ack

    def message_frame(self, body: dict[str, Any] | str | bytes, *, rid: str = "m",
                      session_id: str | None = None, **outer: Any) -> dict[str, Any]:
        """The next ``encrypted_message`` (AAD ``message_<n>``)."""
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return {"type": "encrypted_message", "session_id": session_id or self.session_id, "id": rid,
                "payload": self.e2e.encrypt_message(data), **outer}

    def forged_frame(self, body: dict[str, Any] | str, index: int, *, key: bytes | None = None,
                     rid: str = "forged") -> dict[str, Any]:
        """A message sealed with an arbitrary AAD index and key (the current key by default)."""
        data = body if isinstance(body, str) else json.dumps(body)
        return {"type": "encrypted_message", "session_id": self.session_id, "id": rid,
                "payload": encrypt_message_payload(key or self.e2e.session_key, data, index)}

    async def ask(self, prompt: str, *, rid: str = "m", max_tokens: int = 8, **extra: Any) -> Answer:
        body = {"prompt": prompt, "model": "tiny", "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                **extra}
        await self.wire.send(self.message_frame(body, rid=rid))
        return await self.answer()

    async def answer(self) -> Answer:
        frames = await self.wire.until_end()
        return Answer.open(self.e2e, frames)

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.wire.send(frame)

    async def recv(self) -> dict[str, Any]:
        return await self.wire.recv()

    async def expect_error(self, code: str, rid: str | None = None) -> dict[str, Any]:
        error, end = await self.wire.recv(), await self.wire.recv()
        assert error["type"] == "error" and error["code"] == code, error
        assert end["type"] == "stream_end" and end["reason"] == "error" and end["tokens_used"] == 0, end
        if rid is not None:
            assert error.get("id") == rid and end.get("id") == rid, (error, end)
        return error

    async def close(self) -> None:
        await self.wire.close()


class Answer:
    """One decrypted encrypted answer."""

    def __init__(self, frames: list[dict[str, Any]], pieces: list[str], finish: str | None) -> None:
        self.frames = frames
        self.pieces = pieces
        self.finish = finish
        self.end = frames[-1]

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @classmethod
    def open(cls, e2e: ClientE2ESession, frames: list[dict[str, Any]]) -> Answer:
        pieces: list[str] = []
        finish = None
        for frame in frames[:-1]:
            if frame["type"] == "encrypted_chunk":
                pieces.append(e2e.decrypt_chunk(frame["payload"], final=frame.get("final") is True))
            elif frame["type"] == "encrypted_response":
                finish = e2e.decrypt_response_final(frame["payload"])
            else:
                raise AssertionError(f"unexpected frame in an encrypted answer: {frame}")
        if finish is None:
            e2e.end_response()
        return cls(frames, pieces, finish)


def random_key() -> bytes:
    return os.urandom(32)
