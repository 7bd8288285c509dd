"""A small fake of the documented S5 portal HTTP API (ECOSYSTEM.md), for testing ``S5Backend``; no real S5 node.

Used by the tests (:func:`serve`, in a thread) and the ``failover`` benchmark (``python -m
fabstir.testing.s5_fake PORT`` serves it on 127.0.0.1:PORT in its own process until it is ended).

Covers: ``GET /s5/version``; ``POST /s5/upload`` (raw body) answering ``{"cid": ...}`` (blob CID, SHA-256
variant); ``GET /s5/download/{cid}``; ``DELETE /s5/delete/{cid}``; ``GET /s5/registry?pk=`` and ``POST
/s5/registry`` with Ed25519 signatures checked and a revision that must grow; an optional bearer token.
Not covered: TUS uploads, multipart uploads, ``/s5/blob`` redirects, metadata, pins, account registration.
"""

from __future__ import annotations

import base64
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from nacl.signing import VerifyKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fabstir.storage.s5 import blob_cid, registry_message


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakePortal:
    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.blobs: dict[str, bytes] = {}
        self.registry: dict[str, dict[str, Any]] = {}
        self.app = Starlette(routes=[
            Route("/s5/version", self.version), Route("/s5/upload", self.upload, methods=["POST"]),
            Route("/s5/download/{cid}", self.download), Route("/s5/delete/{cid}", self.delete, methods=["DELETE"]),
            Route("/s5/registry", self.registry_get, methods=["GET"]),
            Route("/s5/registry", self.registry_post, methods=["POST"]),
        ])

    def _denied(self, request: Request) -> Response | None:
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return Response(status_code=401)
        return None

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": "fake-0.1"})

    async def upload(self, request: Request) -> Response:
        if denied := self._denied(request):
            return denied
        data = await request.body()
        cid = blob_cid(data)
        self.blobs[cid] = data
        return JSONResponse({"cid": cid})

    async def download(self, request: Request) -> Response:
        data = self.blobs.get(request.path_params["cid"])
        return Response(status_code=404) if data is None else Response(data)

    async def delete(self, request: Request) -> Response:
        if denied := self._denied(request):
            return denied
        self.blobs.pop(request.path_params["cid"], None)
        return Response(status_code=204)

    async def registry_get(self, request: Request) -> Response:
        entry = self.registry.get(request.query_params.get("pk", ""))
        return Response(status_code=404) if entry is None else JSONResponse(entry)

    async def registry_post(self, request: Request) -> Response:
        if denied := self._denied(request):
            return denied
        try:
            entry = await request.json()
            pk, revision, data = _unb64(entry["pk"]), int(entry["revision"]), _unb64(entry["data"])
            if pk[:1] != b"\xed" or len(data) > 255:
                raise ValueError("bad key or data")
            VerifyKey(pk[1:]).verify(registry_message(revision, data), _unb64(entry["signature"]))
        except Exception:  # noqa: BLE001
            return Response("bad entry", status_code=400)
        old = self.registry.get(entry["pk"])
        if old is not None and revision <= old["revision"]:
            return Response("revision too low", status_code=409)
        self.registry[entry["pk"]] = {k: entry[k] for k in ("pk", "revision", "data", "signature")}
        return Response(status_code=204)


@contextmanager
def serve(portal: FakePortal) -> Iterator[str]:
    """Run ``portal`` on 127.0.0.1, a free port, in a thread; yield its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(portal.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main() -> None:
    """Serve a fake portal (no token) on 127.0.0.1, the port given, until the process is ended."""
    port = int(sys.argv[1])
    print(f"fake S5 portal on http://127.0.0.1:{port}", flush=True)
    uvicorn.run(FakePortal().app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
