"""A small fake of the documented S5 portal HTTP API (ECOSYSTEM.md), served for the ``failover`` benchmark.

A copy of ``tests/storage/s5_fake.py`` (the benchmarks never import ``tests/``), run as its own process:
``python benchmarks/s5_fake.py PORT`` serves it on 127.0.0.1:PORT until it is ended. No real S5 node runs
here: the S5 figures measure ``S5Backend`` and loopback HTTP against this fake, not the S5 network.

Covers: ``GET /s5/version``; ``POST /s5/upload`` (raw body) answering ``{"cid": ...}`` (blob CID, SHA-256
variant); ``GET /s5/download/{cid}``; ``DELETE /s5/delete/{cid}``; ``GET /s5/registry?pk=`` and ``POST
/s5/registry`` with Ed25519 signatures checked and a revision that must grow. Blobs and entries are kept in
memory.
"""

from __future__ import annotations

import base64
import sys
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
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.registry: dict[str, dict[str, Any]] = {}
        self.app = Starlette(routes=[
            Route("/s5/version", self.version), Route("/s5/upload", self.upload, methods=["POST"]),
            Route("/s5/download/{cid}", self.download), Route("/s5/delete/{cid}", self.delete, methods=["DELETE"]),
            Route("/s5/registry", self.registry_get, methods=["GET"]),
            Route("/s5/registry", self.registry_post, methods=["POST"]),
        ])

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": "fake-0.1"})

    async def upload(self, request: Request) -> Response:
        data = await request.body()
        cid = blob_cid(data)
        self.blobs[cid] = data
        return JSONResponse({"cid": cid})

    async def download(self, request: Request) -> Response:
        data = self.blobs.get(request.path_params["cid"])
        return Response(status_code=404) if data is None else Response(data)

    async def delete(self, request: Request) -> Response:
        self.blobs.pop(request.path_params["cid"], None)
        return Response(status_code=204)

    async def registry_get(self, request: Request) -> Response:
        entry = self.registry.get(request.query_params.get("pk", ""))
        return Response(status_code=404) if entry is None else JSONResponse(entry)

    async def registry_post(self, request: Request) -> Response:
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


def main() -> None:
    port = int(sys.argv[1])
    print(f"fake S5 portal on http://127.0.0.1:{port}", flush=True)
    uvicorn.run(FakePortal().app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
