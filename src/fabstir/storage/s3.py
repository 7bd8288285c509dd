"""The S3 backend: blobs and pointers as objects in a bucket of any S3-compatible server (AWS, SeaweedFS, MinIO).

Layout under an optional key prefix::

    {prefix}blobs/{blob id}          the sealed bytes (already encrypted by the client)
    {prefix}pointers/{quoted name}   a pointer as JSON: owner, seq, data and signature (hex / base64)

Pointers are replaced with a conditional write: the backend reads the current object and its ETag, applies
:func:`~fabstir.storage.backend.check_replaces`, then writes with ``If-Match: <etag>`` (or ``If-None-Match: *``
when there was none), so a writer that raced ahead makes ours fail with 412 and we re-read and re-check. AWS S3
(since 2024), SeaweedFS 4.x and MinIO honour these headers. With ``conditional_writes=False`` (for a server
that refuses them) the read-check-write is not atomic: two writers with the same ``seq`` can both succeed and
the last one wins, so keep one writer per conversation there.

Needs the ``s3`` extra (``pip install "fabstir[s3]"``, boto3).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from types import TracebackType
from typing import Any

from fabstir.errors import StorageError
from fabstir.storage.backend import Pointer, blob_id, check_replaces

__all__ = ["S3Backend", "decode_pointer", "encode_pointer"]

_RETRIES = 8


def encode_pointer(pointer: Pointer) -> bytes:
    """A pointer as the JSON bytes a remote backend stores (the name is the object's key, not repeated)."""
    return json.dumps({
        "v": 1, "owner": pointer.owner.hex(), "seq": pointer.seq,
        "data": base64.b64encode(pointer.data).decode(), "signature": pointer.signature.hex(),
    }, separators=(",", ":")).encode()


def decode_pointer(name: str, raw: bytes) -> Pointer:
    """The inverse of :func:`encode_pointer`; ``STORAGE_BAD_FORMAT`` if ``raw`` is not one."""
    try:
        body = json.loads(raw)
        if body.get("v") != 1:
            raise ValueError("unknown version")
        return Pointer(name, bytes.fromhex(body["owner"]), int(body["seq"]), base64.b64decode(body["data"]),
                       bytes.fromhex(body["signature"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StorageError(f"pointer {name} is unreadable", code="STORAGE_BAD_FORMAT") from exc


class S3Backend:
    """Blobs and signed pointers in ``bucket`` at ``endpoint_url`` (blocking; safe to share between threads).

    ``STORAGE_UNAVAILABLE`` when the server cannot be reached, ``STORAGE_BUCKET_NOT_FOUND`` when the bucket
    does not exist (checked on open; ``create_bucket=True`` makes it instead).
    """

    def __init__(self, endpoint_url: str | None, bucket: str, *, access_key: str | None = None,
                 secret_key: str | None = None, region: str = "us-east-1", prefix: str = "",
                 create_bucket: bool = False, conditional_writes: bool = True, timeout: float = 10.0) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise StorageError('the S3 backend needs boto3: pip install "fabstir[s3]"', code="STORAGE_ERROR") from exc
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.prefix = prefix
        self.conditional_writes = conditional_writes
        config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"})
        self._s3: Any = boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
                                     aws_secret_access_key=secret_key, region_name=region, config=config)
        try:
            self._call("head_bucket", Bucket=bucket)
        except StorageError as exc:
            if exc.code != "STORAGE_BUCKET_NOT_FOUND" or not create_bucket:
                raise
            self._call("create_bucket", Bucket=bucket)

    def __enter__(self) -> S3Backend:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def put(self, data: bytes) -> str:
        blob = blob_id(data)
        self._call("put_object", Bucket=self.bucket, Key=self._blob_key(blob), Body=data)
        return blob

    def get(self, blob: str) -> bytes:
        found = self._get_object(self._blob_key(blob))
        if found is None:
            raise StorageError(f"no blob {blob}", code="STORAGE_NOT_FOUND")
        if blob_id(found[0]) != blob:
            raise StorageError(f"blob {blob} does not match its hash", code="STORAGE_TAMPERED")
        return found[0]

    def list_blobs(self) -> list[str]:
        return self._list(self.prefix + "blobs/")

    def delete(self, blob: str) -> None:
        self._call("delete_object", Bucket=self.bucket, Key=self._blob_key(blob))

    def get_pointer(self, name: str) -> Pointer | None:
        found = self._get_object(self._pointer_key(name))
        return None if found is None else decode_pointer(name, found[0])

    def set_pointer(self, pointer: Pointer) -> None:
        key = self._pointer_key(pointer.name)
        body = encode_pointer(pointer)
        for _ in range(_RETRIES):
            found = self._get_object(key)
            check_replaces(pointer, None if found is None else decode_pointer(pointer.name, found[0]))
            condition: dict[str, str] = {}
            if self.conditional_writes:
                condition = {"IfNoneMatch": "*"} if found is None else {"IfMatch": found[1]}
            try:
                self._call("put_object", Bucket=self.bucket, Key=key, Body=body, **condition)
                return
            except StorageError as exc:
                if exc.code != "STORAGE_CONFLICT":
                    raise
        raise StorageError(f"pointer {pointer.name}: too many concurrent writers", code="STORAGE_STALE_POINTER")

    def list_pointers(self) -> list[str]:
        return [urllib.parse.unquote(name) for name in self._list(self.prefix + "pointers/")]

    def close(self) -> None:
        self._s3.close()

    def _blob_key(self, blob: str) -> str:
        return f"{self.prefix}blobs/{blob}"

    def _pointer_key(self, name: str) -> str:
        return f"{self.prefix}pointers/{urllib.parse.quote(name, safe='')}"

    def _get_object(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or ``None`` if there is no such key."""
        try:
            answer = self._call("get_object", Bucket=self.bucket, Key=key)
            return bytes(answer["Body"].read()), str(answer["ETag"])
        except StorageError as exc:
            if exc.code == "STORAGE_NOT_FOUND":
                return None
            raise

    def _list(self, prefix: str) -> list[str]:
        names: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list_objects_v2", Bucket=self.bucket, Prefix=prefix, **token)
            names += [str(item["Key"])[len(prefix):] for item in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(names)
            token = {"ContinuationToken": str(page["NextContinuationToken"])}

    def _call(self, operation: str, **kwargs: Any) -> Any:
        """Call the S3 client, mapping its errors onto ``StorageError`` codes."""
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

        try:
            return getattr(self._s3, operation)(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (operation == "head_bucket" and status == 404):
                raise StorageError(f"S3 bucket {self.bucket} does not exist", code="STORAGE_BUCKET_NOT_FOUND") from exc
            if code in ("NoSuchKey", "404") or status == 404:
                raise StorageError(f"no object {kwargs.get('Key')}", code="STORAGE_NOT_FOUND") from exc
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise StorageError(f"object {kwargs.get('Key')} changed meanwhile", code="STORAGE_CONFLICT") from exc
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
                raise StorageError(f"S3 refused access to {self.bucket}: {code}", code="STORAGE_ACCESS_DENIED") from exc
            raise StorageError(f"S3 {operation} failed: {code} {error.get('Message', '')}".strip(),
                               code="STORAGE_UNAVAILABLE" if (status or 0) >= 500 else "STORAGE_ERROR") from exc
        except (ConnectionError, HTTPClientError) as exc:
            raise StorageError(f"S3 server {self.endpoint_url} unreachable: {exc}", code="STORAGE_UNAVAILABLE") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 {operation} failed: {exc}", code="STORAGE_ERROR") from exc
