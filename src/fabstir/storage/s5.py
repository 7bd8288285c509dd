"""The S5 backend: blobs and pointers on an S5 portal, through its HTTP API (upload, download, registry).

What goes where:

- a blob is uploaded as is (``POST /s5/upload``, raw body); the portal answers its CID;
- a pointer is serialized (owner, seq, data, the fabstir signature), uploaded as a blob, and named by an S5
  registry entry (``POST /s5/registry``): ``revision`` = the pointer's ``seq``, ``data`` = the raw CID bytes,
  signed in S5's registry format (``0x07 || revision as 8 bytes little-endian || len(data) || data``) with an
  Ed25519 key derived from this backend's ``secret`` and the pointer's name, so any process with the secret
  finds it again and the portal, which refuses a revision that is not higher, enforces "seq only moves
  forward" atomically. The fabstir signature inside is checked on every write, as in every backend;
- an index (blob id -> CID, and the pointer names) is one more registry entry and blob, under a key derived
  for "index": S5 has no listing API. It is updated with the same revision check, re-read and retried on a race.

Content is checked on download by its SHA-256 blob id, whatever hash the portal's CIDs use.
:func:`blob_cid` computes the documented blob CID with the SHA-256 variant (``0x12``) so no BLAKE3 package is
needed; the portal's own CIDs are used as given. Tested against a fake of the documented API only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from types import TracebackType
from typing import Any

import httpx
from nacl.signing import SigningKey

from fabstir.errors import StorageError
from fabstir.storage.backend import Pointer, blob_id, check_replaces
from fabstir.storage.s3 import decode_pointer, encode_pointer

__all__ = ["S5Backend", "base58_encode", "blob_cid", "registry_message"]

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_RETRIES = 8
_INDEX = b"index"


def base58_encode(data: bytes) -> str:
    """Bitcoin base58 (multibase ``z``)."""
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = _ALPHABET[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + out


def blob_cid(data: bytes) -> str:
    """The S5 blob CID of ``data``, SHA-256 variant: ``0x5b 0x82 0x12 || sha256 || size LE (trimmed)``, base58btc."""
    size = len(data).to_bytes(8, "little").rstrip(b"\x00")
    return "z" + base58_encode(b"\x5b\x82\x12" + hashlib.sha256(data).digest() + size)


def registry_message(revision: int, data: bytes) -> bytes:
    """What an S5 registry signature covers."""
    return b"\x07" + revision.to_bytes(8, "little") + bytes([len(data)]) + data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class S5Backend:
    """Blobs and signed pointers on the S5 portal at ``url`` (blocking; safe to share between threads).

    ``secret`` (32 bytes, e.g. ``storage_key.pointer_key("s5").encode()``) derives the registry keys; keep it
    with the user's key. ``token`` is the portal account's bearer token, if it wants one.
    """

    def __init__(self, url: str, secret: bytes, *, token: str | None = None, timeout: float = 10.0) -> None:
        if len(secret) != 32:
            raise StorageError("the S5 secret must be 32 bytes", code="STORAGE_KEY_INVALID")
        self.url = url.rstrip("/")
        self._secret = secret
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._lock = threading.Lock()
        self._index: dict[str, Any] = {"blobs": {}, "pointers": []}
        self._index_revision = 0

    def __enter__(self) -> S5Backend:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def put(self, data: bytes) -> str:
        blob = blob_id(data)
        cid = self._upload(data)
        self._update_index(lambda index: index["blobs"].__setitem__(blob, cid))
        return blob

    def get(self, blob: str) -> bytes:
        with self._lock:
            cid = self._index["blobs"].get(blob)
        if cid is None:
            self._refresh_index()
            with self._lock:
                cid = self._index["blobs"].get(blob)
        if cid is None:
            raise StorageError(f"no blob {blob}", code="STORAGE_NOT_FOUND")
        data = self._download(str(cid))
        if data is None:
            raise StorageError(f"no blob {blob}", code="STORAGE_NOT_FOUND")
        if blob_id(data) != blob:
            raise StorageError(f"blob {blob} does not match its hash", code="STORAGE_TAMPERED")
        return data

    def list_blobs(self) -> list[str]:
        self._refresh_index()
        with self._lock:
            return sorted(self._index["blobs"])

    def delete(self, blob: str) -> None:
        removed: list[str] = []
        self._update_index(lambda index: removed.append(index["blobs"].pop(blob, "")))
        if removed and removed[0]:
            self._request("DELETE", f"/s5/delete/{removed[0]}", missing_ok=True)

    def get_pointer(self, name: str) -> Pointer | None:
        entry = self._registry_get(self._registry_key(name.encode()))
        if entry is None:
            return None
        raw = self._download(entry[1].decode())
        if raw is None:
            raise StorageError(f"pointer {name} names a missing blob", code="STORAGE_NOT_FOUND")
        pointer = decode_pointer(name, raw)
        if pointer.seq != entry[0]:
            raise StorageError(f"pointer {name} does not match its registry entry", code="STORAGE_TAMPERED")
        return pointer

    def set_pointer(self, pointer: Pointer) -> None:
        check_replaces(pointer, self.get_pointer(pointer.name))
        cid = self._upload(encode_pointer(pointer))
        if not self._registry_set(self._registry_key(pointer.name.encode()), pointer.seq, cid.encode()):
            check_replaces(pointer, self.get_pointer(pointer.name))  # names the reason: stale or another owner
            raise StorageError(f"pointer {pointer.name}: seq {pointer.seq} was overtaken",
                               code="STORAGE_STALE_POINTER")
        with self._lock:
            known = pointer.name in self._index["pointers"]
        if not known:
            self._update_index(lambda index: None if pointer.name in index["pointers"]
                               else index["pointers"].append(pointer.name))

    def list_pointers(self) -> list[str]:
        self._refresh_index()
        with self._lock:
            return sorted(self._index["pointers"])

    def close(self) -> None:
        self._http.close()

    # -- the index -------------------------------------------------------------------------------------------

    def _refresh_index(self) -> None:
        entry = self._registry_get(self._registry_key(_INDEX))
        if entry is None:
            return
        raw = self._download(entry[1].decode())
        if raw is None:
            raise StorageError("the S5 index names a missing blob", code="STORAGE_NOT_FOUND")
        try:
            index = json.loads(raw)
            index = {"blobs": dict(index["blobs"]), "pointers": list(index["pointers"])}
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError("the S5 index is unreadable", code="STORAGE_BAD_FORMAT") from exc
        with self._lock:
            if entry[0] >= self._index_revision:
                self._index, self._index_revision = index, entry[0]

    def _update_index(self, change: Any) -> None:
        for _ in range(_RETRIES):
            with self._lock:
                index = {"blobs": dict(self._index["blobs"]), "pointers": list(self._index["pointers"])}
                revision = self._index_revision
            change(index)
            cid = self._upload(json.dumps(index, sort_keys=True).encode())
            if self._registry_set(self._registry_key(_INDEX), revision + 1, cid.encode()):
                with self._lock:
                    if revision + 1 > self._index_revision:
                        self._index, self._index_revision = index, revision + 1
                return
            self._refresh_index()
        raise StorageError("the S5 index: too many concurrent writers", code="STORAGE_STALE_POINTER")

    # -- the portal ------------------------------------------------------------------------------------------

    def _registry_key(self, name: bytes) -> SigningKey:
        return SigningKey(hmac.new(self._secret, b"fabstir/s5/registry\x00" + name, hashlib.sha256).digest())

    def _registry_get(self, key: SigningKey) -> tuple[int, bytes] | None:
        pk = b"\xed" + bytes(key.verify_key)
        answer = self._request("GET", "/s5/registry", params={"pk": _b64(pk)}, missing_ok=True)
        if answer is None:
            return None
        try:
            body = answer.json()
            revision, data, signature = int(body["revision"]), _unb64(body["data"]), _unb64(body["signature"])
            key.verify_key.verify(registry_message(revision, data), signature)
        except Exception as exc:  # noqa: BLE001 - a bad JSON, field or signature all mean a bad entry
            raise StorageError("the S5 portal returned a bad registry entry", code="STORAGE_TAMPERED") from exc
        return revision, data

    def _registry_set(self, key: SigningKey, revision: int, data: bytes) -> bool:
        """Write the entry; ``False`` if the portal refused it because its revision is not higher."""
        body = {"pk": _b64(b"\xed" + bytes(key.verify_key)), "revision": revision, "data": _b64(data),
                "signature": _b64(key.sign(registry_message(revision, data)).signature)}
        try:
            self._request("POST", "/s5/registry", json=body)
        except StorageError as exc:
            if exc.code == "STORAGE_CONFLICT":
                return False
            raise
        return True

    def _upload(self, data: bytes) -> str:
        answer = self._request("POST", "/s5/upload", content=data,
                               headers={"Content-Type": "application/octet-stream"})
        assert answer is not None
        try:
            return str(answer.json()["cid"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError("the S5 portal answered an upload without a CID", code="STORAGE_BAD_FORMAT") from exc

    def _download(self, cid: str) -> bytes | None:
        answer = self._request("GET", f"/s5/download/{cid}", missing_ok=True)
        return None if answer is None else answer.content

    def _request(self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any) -> httpx.Response | None:
        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StorageError(f"S5 portal {self.url} unreachable: {exc}", code="STORAGE_UNAVAILABLE") from exc
        if answer.status_code == 404 and missing_ok:
            return None
        if answer.status_code in (401, 403):
            raise StorageError(f"S5 portal refused {method} {path}", code="STORAGE_ACCESS_DENIED")
        if answer.status_code in (400, 409, 412) and path == "/s5/registry":
            raise StorageError(f"S5 registry refused the entry: {answer.text[:200]}", code="STORAGE_CONFLICT")
        if answer.status_code >= 400:
            code = "STORAGE_UNAVAILABLE" if answer.status_code >= 500 else "STORAGE_ERROR"
            raise StorageError(f"S5 {method} {path}: HTTP {answer.status_code}", code=code)
        return answer
