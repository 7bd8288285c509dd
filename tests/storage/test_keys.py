from __future__ import annotations

import pytest

from fabstir.errors import StorageError
from fabstir.storage import StorageKey
from fabstir.storage.keys import new_salt, open_sealed, seal

WALLET = "0x" + "11" * 32


def test_short_secret_is_refused() -> None:
    with pytest.raises(StorageError) as caught:
        StorageKey.from_secret(b"x" * 31)
    assert caught.value.code == "STORAGE_KEY_INVALID"


def test_wallet_key_as_hex_or_bytes_is_the_same_key() -> None:
    assert StorageKey.from_wallet_key(WALLET).name("s") == StorageKey.from_wallet_key(bytes.fromhex("11" * 32)).name("s")
    with pytest.raises(StorageError):
        StorageKey.from_wallet_key("0x1234")


def test_secret_and_wallet_sources_are_separated() -> None:
    raw = bytes.fromhex("11" * 32)
    assert StorageKey.from_secret(raw).name("s") != StorageKey.from_wallet_key(raw).name("s")


def test_names_depend_on_key_and_id_and_hide_both() -> None:
    one, two = StorageKey.from_secret(b"a" * 32), StorageKey.from_secret(b"b" * 32)
    assert one.name("s") == one.name("s") != one.name("t")
    assert one.name("s") != two.name("s")
    assert "s" not in repr(one) and "hidden" in repr(one)


def test_each_conversation_salt_gives_its_own_key() -> None:
    key = StorageKey.from_secret(b"a" * 32)
    assert key.conversation_key(new_salt()) != key.conversation_key(new_salt())


def test_seal_detects_any_change_and_the_wrong_aad() -> None:
    key = StorageKey.from_secret(b"a" * 32).conversation_key(b"\x00" * 32)
    sealed = seal(key, b"hello", b"aad")
    assert open_sealed(key, sealed, b"aad") == b"hello"
    for bad, aad in [(sealed[:-1] + bytes([sealed[-1] ^ 1]), b"aad"), (sealed, b"other"), (sealed[:10], b"aad")]:
        with pytest.raises(StorageError) as caught:
            open_sealed(key, bad, aad)
        assert caught.value.code == "STORAGE_TAMPERED"
