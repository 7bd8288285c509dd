"""The S5 backend against a fake of the documented S5 portal HTTP API (no real S5 node runs here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nacl.signing import SigningKey

from fabstir.errors import StorageError
from fabstir.storage import ConversationStore, StorageKey, sign_pointer
from fabstir.storage.s5 import S5Backend, base58_encode, blob_cid
from fabstir.testing.s5_fake import FakePortal, serve


@pytest.fixture
def portal() -> Iterator[tuple[FakePortal, str]]:
    fake = FakePortal(token="t0ken")
    with serve(fake) as url:
        yield fake, url


def _code(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(StorageError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value.code


def test_cid_format() -> None:
    assert base58_encode(b"\x00\x00\x01") == "112"
    cid = blob_cid(b"abc")
    assert cid.startswith("z") and len(cid) > 40


def test_second_process_sees_everything_and_portal_holds_no_plaintext(portal: tuple[FakePortal, str],
                                                                      key: StorageKey) -> None:
    fake, url = portal
    secret = key.pointer_key("s5").encode()
    with S5Backend(url, secret, token="t0ken") as first:
        store = ConversationStore.open(first, key)
        store.add_user_message("s-42", "quetzalcoatl prompt", model="my-model", host="http://host.example")
        store.add_answer_chunk("s-42", "quetzalcoatl answer", done=True)
    with S5Backend(url, secret, token="t0ken") as second:
        again = ConversationStore.open(second, key)
        assert again.list_conversations() == ["s-42"]
        assert [m.content for m in again.load("s-42").messages] == ["quetzalcoatl prompt", "quetzalcoatl answer"]
    for data in fake.blobs.values():
        for word in (b"quetzalcoatl", b"my-model", b"host.example", b"s-42"):
            assert word not in data


def test_registry_race_and_auth(portal: tuple[FakePortal, str]) -> None:
    _, url = portal
    secret = bytes(32)
    signer = SigningKey.generate()
    with S5Backend(url, secret, token="t0ken") as one, S5Backend(url, secret, token="t0ken") as two:
        one.set_pointer(sign_pointer(signer, "p", 1, b"a"))
        real = two.get_pointer
        raced: list[bool] = []

        def racing(name: str):  # type: ignore[no-untyped-def]
            found = real(name)
            if not raced:
                raced.append(True)
                one.set_pointer(sign_pointer(signer, "p", 2, b"theirs"))
            return found

        two.get_pointer = racing  # type: ignore[method-assign]
        assert _code(two.set_pointer, sign_pointer(signer, "p", 2, b"ours")) == "STORAGE_STALE_POINTER"
        found = one.get_pointer("p")
        assert found is not None and found.data == b"theirs"
    with S5Backend(url, secret, token="wrong") as denied:
        assert _code(denied.put, b"x") == "STORAGE_ACCESS_DENIED"


def test_unreachable_portal() -> None:
    from tests.storage.seaweed import _free_ports

    with S5Backend(f"http://127.0.0.1:{_free_ports(1)[0]}", bytes(32), timeout=2) as dead:
        assert _code(dead.put, b"x") == "STORAGE_UNAVAILABLE"
