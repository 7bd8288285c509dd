#!/usr/bin/env python3
"""Compile the Solidity contracts with the pinned solc-js and write deterministic JSON artifacts.

Usage:
    python scripts/build_contracts.py            # rebuild and write the artifacts
    python scripts/build_contracts.py --check    # rebuild into a temp dir; exit 1 if anything differs

Needs Node.js and ``npm ci --prefix tools/chain`` (solc-js pinned at 0.8.28 in tools/chain/package.json).

Theory of operation: every ``.sol`` file under the source trees below is passed inline to solc's standard JSON
(run by ``tools/chain/compile.js`` in a Node subprocess). Two compilations run side by side: the sources in
``VIA_IR_SOURCES`` with the IR pipeline, everything else with the legacy one (the IR pipeline is 3x slower in
solc-js, so it is used only where needed). Any error, and any warning, fails the build. Each contract or interface defined in a top-level file of a tree (not in its ``lib/``) gets
``<artifact dir>/<Name>.json`` with sorted keys and two-space indentation, so a rebuild is byte-identical.
``sourceSha256`` is the SHA-256 of the sorted ``<path> <sha256 of file>`` lines of every source file the
contract was compiled from (taken from solc's metadata), so it changes exactly when its inputs change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHAIN_TOOLS = ROOT / "tools" / "chain"
COMPILE_JS = CHAIN_TOOLS / "compile.js"

# (source tree, artifact directory), both relative to the repository root.
TREES = [
    ("contracts", "src/fabstir/chain/artifacts"),
    ("tests/chain/contracts", "tests/chain/artifacts"),
]

# cancun: solc 0.8.28's default target; py-evm 0.12.1b1 (Prague rules) and anvil 1.7.1 both run it, and
# prague would emit the same code (it adds no opcode that solc 0.8.28 uses).
BASE_SETTINGS: dict[str, Any] = {
    "evmVersion": "cancun",
    "optimizer": {"enabled": True, "runs": 200},
}
# JobMarketplace's public `sessionJobs(id)` getter returns 17 values, one more than the legacy code generator
# can keep on the stack; the IR pipeline moves them to memory.
VIA_IR_SOURCES = frozenset({"contracts/JobMarketplace.sol"})
OUTPUTS = ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"]


class BuildError(Exception):
    """The compiler could not be run, or reported errors or warnings."""


def collect_sources(root: Path = ROOT) -> dict[str, str]:
    """Map each repository-relative ``.sol`` path under the source trees to its text."""
    sources: dict[str, str] = {}
    for tree, _ in TREES:
        for path in sorted((root / tree).rglob("*.sol")):
            sources[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
    return sources


def settings_for(source_name: str) -> dict[str, Any]:
    """The compiler settings used for ``source_name`` (recorded in its artifacts)."""
    return {**BASE_SETTINGS, "viaIR": source_name in VIA_IR_SOURCES}


def _start_solc(sources: dict[str, str], targets: list[str], via_ir: bool) -> subprocess.Popen[bytes]:
    request = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": {**BASE_SETTINGS, "viaIR": via_ir, "outputSelection": {t: {"*": OUTPUTS} for t in targets}},
    }
    with tempfile.TemporaryFile() as stdin:  # a file, not a pipe: both compilers can start at once
        stdin.write(json.dumps(request).encode())
        stdin.seek(0)
        try:
            return subprocess.Popen(["node", str(COMPILE_JS)], stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=CHAIN_TOOLS)
        except FileNotFoundError as exc:
            raise BuildError("Node.js (`node`) is not on PATH") from exc


def _finish_solc(proc: subprocess.Popen[bytes]) -> tuple[str, dict[str, Any]]:
    stdout, stderr = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise BuildError(f"compile.js failed ({proc.returncode}):\n{stderr.decode(errors='replace')}")
    reply = json.loads(stdout)
    output = reply["output"]
    problems = [e for e in output.get("errors", []) if e.get("severity") in ("error", "warning")]
    if problems:
        raise BuildError("solc reported:\n" + "\n".join(e.get("formattedMessage", e["message"]) for e in problems))
    return reply["solcVersion"].removesuffix(".Emscripten.clang"), output


def run_solc(sources: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Compile ``sources`` (legacy and IR groups in parallel); return (solc version, merged solc output)."""
    if not (CHAIN_TOOLS / "node_modules" / "solc").is_dir():
        raise BuildError(f"solc-js is not installed: run `npm ci --prefix {CHAIN_TOOLS.relative_to(ROOT)}`")
    groups = {via_ir: [name for name in sources if (name in VIA_IR_SOURCES) == via_ir] for via_ir in (False, True)}
    procs = [_start_solc(sources, targets, via_ir) for via_ir, targets in groups.items() if targets]
    try:
        results = [_finish_solc(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    contracts: dict[str, Any] = {}
    for _, output in results:
        contracts.update(output.get("contracts", {}))
    return results[0][0], {"contracts": contracts}


def _inputs_sha256(metadata: dict[str, Any], sources: dict[str, str]) -> str:
    lines = sorted(f"{name} {hashlib.sha256(sources[name].encode()).hexdigest()}" for name in metadata["sources"])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _hex(code: str, name: str) -> str:
    if "__$" in code:
        raise BuildError(f"{name} needs library linking, which this build does not do")
    return "0x" + code


def make_artifacts(version: str, output: dict[str, Any], sources: dict[str, str]) -> dict[str, dict[str, str]]:
    """Return ``{artifact dir: {file name: JSON text}}`` for the contracts of each tree's top-level files."""
    result: dict[str, dict[str, str]] = {out_dir: {} for _, out_dir in TREES}
    for tree, out_dir in TREES:
        for source_name, contracts in sorted(output.get("contracts", {}).items()):
            if Path(source_name).parent.as_posix() != tree:
                continue
            for name, compiled in sorted(contracts.items()):
                filename = f"{name}.json"
                if filename in result[out_dir]:
                    raise BuildError(f"two contracts named {name} in {tree}")
                artifact = {
                    "contractName": name,
                    "sourceName": source_name,
                    "abi": compiled["abi"],
                    "bytecode": _hex(compiled["evm"]["bytecode"]["object"], name),
                    "deployedBytecode": _hex(compiled["evm"]["deployedBytecode"]["object"], name),
                    "compiler": {"version": version, "settings": settings_for(source_name)},
                    "sourceSha256": _inputs_sha256(json.loads(compiled["metadata"]), sources),
                }
                result[out_dir][filename] = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
    return result


def build(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """Compile everything and return the artifact texts (nothing is written)."""
    sources = collect_sources(root)
    version, output = run_solc(sources)
    return make_artifacts(version, output, sources)


def write(artifacts: dict[str, dict[str, str]], root: Path) -> None:
    """Write each artifact directory, removing JSON files that no longer correspond to a contract."""
    for out_dir, files in artifacts.items():
        target = root / out_dir
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob("*.json"):
            if stale.name not in files:
                stale.unlink()
        for filename, text in files.items():
            (target / filename).write_text(text, encoding="utf-8")


def differences(artifacts: dict[str, dict[str, str]], root: Path = ROOT) -> list[str]:
    """Describe every way the committed artifacts under ``root`` differ from ``artifacts``."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        write(artifacts, Path(tmp))
        for out_dir in artifacts:
            fresh = {p.name: p.read_bytes() for p in (Path(tmp) / out_dir).glob("*.json")}
            committed = {p.name: p.read_bytes() for p in (root / out_dir).glob("*.json")}
            for name in sorted(fresh.keys() | committed.keys()):
                if name not in committed:
                    problems.append(f"{out_dir}/{name}: missing")
                elif name not in fresh:
                    problems.append(f"{out_dir}/{name}: no longer built from any source")
                elif fresh[name] != committed[name]:
                    problems.append(f"{out_dir}/{name}: differs from a fresh build")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed artifacts are stale")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        artifacts = build()
    except BuildError as exc:
        print(f"build_contracts: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    count = sum(len(files) for files in artifacts.values())
    if args.check:
        problems = differences(artifacts)
        for problem in problems:
            print(f"build_contracts: {problem}", file=sys.stderr)
        if problems:
            print("build_contracts: run `python scripts/build_contracts.py` and commit the result", file=sys.stderr)
            return 1
        print(f"build_contracts: {count} artifacts up to date (compiled in {elapsed:.1f} s)")
        return 0
    write(artifacts, ROOT)
    print(f"build_contracts: wrote {count} artifacts (compiled in {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
