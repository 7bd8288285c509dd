"""The committed contract artifacts are exactly what the pinned compiler builds from the committed sources."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAIN_TOOLS = ROOT / "tools" / "chain"
BUILD_SCRIPT = ROOT / "scripts" / "build_contracts.py"
ARTIFACTS = ROOT / "src" / "fabstir" / "chain" / "artifacts"
DEPLOYABLE = ["FabstirToken", "ModelRegistry", "NodeRegistry", "HostEarnings", "ProofSystem", "JobMarketplace"]


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_contracts", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def solc_installed() -> None:
    """Node.js with the pinned solc-js; runs `npm ci` in tools/chain when node_modules is missing."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    if not (CHAIN_TOOLS / "node_modules" / "solc").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install the pinned solc-js"
        proc = subprocess.run([npm, "ci", "--prefix", str(CHAIN_TOOLS)], capture_output=True, text=True,
                              timeout=600, check=False)
        assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"


def test_committed_artifacts_match_a_fresh_build(solc_installed: None) -> None:
    proc = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--check"], capture_output=True, text=True,
                          timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


def test_check_reports_stale_missing_and_extra_files(tmp_path: Path) -> None:
    build = _load_build_script()
    fresh = {"out": {"A.json": '{"a": 1}\n', "B.json": '{"b": 1}\n'}}
    build.write(fresh, tmp_path)
    assert build.differences(fresh, tmp_path) == []
    (tmp_path / "out" / "A.json").write_text('{"a": 2}\n')
    (tmp_path / "out" / "B.json").unlink()
    (tmp_path / "out" / "C.json").write_text("{}\n")
    assert build.differences(fresh, tmp_path) == [
        "out/A.json: differs from a fresh build", "out/B.json: missing", "out/C.json: no longer built from any source"]


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_artifact_shape(name: str) -> None:
    text = (ARTIFACTS / f"{name}.json").read_text(encoding="utf-8")
    artifact = json.loads(text)
    assert text == json.dumps(artifact, indent=2, sort_keys=True) + "\n"  # the canonical, deterministic form
    assert artifact["contractName"] == name
    assert artifact["compiler"]["version"].startswith("0.8.28+commit.")
    assert artifact["compiler"]["settings"]["optimizer"] == {"enabled": True, "runs": 200}
    assert artifact["compiler"]["settings"]["evmVersion"] == "cancun"
    for key in ("bytecode", "deployedBytecode"):
        assert artifact[key].startswith("0x") and len(artifact[key]) > 2
        bytes.fromhex(artifact[key][2:])  # fully linked: no library placeholders
    assert len(artifact["deployedBytecode"]) // 2 - 1 <= 24_576  # EIP-170 code size limit
    assert len(artifact["sourceSha256"]) == 64
    assert any(entry["type"] == "constructor" for entry in artifact["abi"]) or name in (
        "ModelRegistry", "HostEarnings", "ProofSystem")


def test_compiler_versions_are_pinned() -> None:
    package = json.loads((CHAIN_TOOLS / "package.json").read_text(encoding="utf-8"))
    assert package["dependencies"] == {"solc": "0.8.28", "@foundry-rs/anvil": "1.7.1"}
    lock = json.loads((CHAIN_TOOLS / "package-lock.json").read_text(encoding="utf-8"))
    assert lock["packages"]["node_modules/solc"]["version"] == "0.8.28"
    assert lock["packages"]["node_modules/@foundry-rs/anvil"]["version"] == "1.7.1"
