"""The checkpoint circuit's settings and keys, built once per circuit and kept in a cache directory.

``ensure_keys`` returns the keys of the current circuit (:func:`fabstir.zk.circuit.circuit_id`), building them
the first time: the ONNX graph, EZKL settings, the compiled circuit, and the proving and verifying keys from the
SRS shipped with the package (``data/checkpoint_k12.srs``). That SRS was made once with ``ezkl.gen_srs`` and is
committed, because the verifying key, and so the committed ``contracts/Halo2Verifier.sol``, depend on it (a
fresh ``gen_srs`` is random). It is a development SRS: whoever kept its secret could forge proofs; a deployment
that needs more supplies a ceremony SRS of 2^12 points as ``srs``. Nothing is downloaded.

A build writes into a private temporary folder and renames it into place, so concurrent builders (test
workers, two nodes) never see half-written keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fabstir.errors import ProofError
from fabstir.zk.circuit import CIRCUIT_NAME, circuit_id, onnx_model_bytes

__all__ = ["CircuitKeys", "bundled_settings", "bundled_srs", "default_cache_dir", "ensure_keys", "load_ezkl"]

SRS_NAME = "checkpoint_k12.srs"
SETTINGS_NAME = "checkpoint_settings.json"


def load_ezkl() -> Any:
    """The ``ezkl`` module (the ``proofs`` extra).

    Raises:
        ProofError: ezkl is not installed (code ZK_UNAVAILABLE).
    """
    try:
        import ezkl
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ProofError("checkpoint proofs need ezkl: pip install 'fabstir[proofs]'", code="ZK_UNAVAILABLE") from exc
    return ezkl


def default_cache_dir() -> Path:
    """``$FABSTIR_ZK_CACHE``, else ``~/.cache/fabstir/zk``."""
    configured = os.environ.get("FABSTIR_ZK_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "fabstir" / "zk"


def bundled_srs() -> Path:
    """The development SRS shipped with the package (2^12 points)."""
    return Path(str(resources.files("fabstir.zk").joinpath("data", SRS_NAME)))


def bundled_settings() -> Path:
    """The circuit's EZKL settings, as committed.

    ``ezkl.gen_settings`` with :data:`~fabstir.zk.circuit.RUN_ARGS` made them once; they are kept rather than
    regenerated because ezkl lists the circuit's range checks in hash-map order, which changes from run to run
    and, with it, the verifying key.
    """
    return Path(str(resources.files("fabstir.zk").joinpath("data", SETTINGS_NAME)))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class CircuitKeys:
    """A built circuit: its folder holds ``model.onnx``, ``settings.json``, ``circuit.ezkl``, ``srs``, ``vk``
    and ``pk``."""

    directory: Path

    @property
    def model(self) -> Path:
        return self.directory / "model.onnx"

    @property
    def settings(self) -> Path:
        return self.directory / "settings.json"

    @property
    def compiled(self) -> Path:
        return self.directory / "circuit.ezkl"

    @property
    def srs(self) -> Path:
        return self.directory / "srs"

    @property
    def vk(self) -> Path:
        return self.directory / "vk"

    @property
    def pk(self) -> Path:
        return self.directory / "pk"

    @property
    def info(self) -> dict[str, Any]:
        """What the build recorded (circuit id, SRS digest, seconds per step)."""
        data: dict[str, Any] = json.loads((self.directory / "ready.json").read_text(encoding="utf-8"))
        return data


def _build(target: Path, srs: Path, ident: str, progress: Callable[[str], None]) -> None:
    ezkl = load_ezkl()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    target.joinpath("model.onnx").write_bytes(onnx_model_bytes())
    keys = CircuitKeys(target)
    progress(f"zk: building the keys of circuit {CIRCUIT_NAME} ({ident}) in {target.parent}")
    shutil.copyfile(bundled_settings(), keys.settings)
    if not ezkl.compile_circuit(str(keys.model), str(keys.compiled), str(keys.settings)):
        raise ProofError("ezkl could not compile the circuit", code="ZK_KEYS_FAILED")
    timings["compile_s"] = time.perf_counter() - started
    shutil.copyfile(srs, keys.srs)
    progress("zk: setup (proving and verifying keys)...")
    step = time.perf_counter()
    if not ezkl.setup(str(keys.compiled), str(keys.vk), str(keys.pk), srs_path=str(keys.srs)):
        raise ProofError("ezkl setup failed", code="ZK_KEYS_FAILED")
    timings["setup_s"] = time.perf_counter() - step
    timings["total_s"] = time.perf_counter() - started
    pk_bytes = keys.pk.stat().st_size
    info = {"circuit": CIRCUIT_NAME, "circuit_id": ident, "srs_sha256": _sha256(srs),
            "vk_sha256": _sha256(keys.vk), "pk_bytes": pk_bytes, **timings}
    (target / "ready.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    progress(f"zk: keys ready in {timings['total_s']:.1f} s (proving key {pk_bytes / 1e6:.1f} MB)")


def ensure_keys(cache_dir: str | Path | None = None, *, srs: str | Path | None = None,
                progress: Callable[[str], None] | None = None) -> CircuitKeys:
    """The current circuit's keys under ``cache_dir`` (default :func:`default_cache_dir`), built if missing.

    ``progress`` gets a line per long step (default: none). ``srs`` replaces the bundled development SRS.

    Raises:
        ProofError: ezkl is missing (ZK_UNAVAILABLE) or a build step failed (ZK_KEYS_FAILED).
    """
    say = progress or (lambda _line: None)
    srs_path = Path(srs) if srs is not None else bundled_srs()
    if not srs_path.is_file():
        raise ProofError(f"no SRS at {srs_path}", code="ZK_KEYS_FAILED")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ident = circuit_id(_sha256(srs_path) + _sha256(bundled_settings()))
    final = root / f"{CIRCUIT_NAME}-{ident}"
    if (final / "ready.json").is_file():
        return CircuitKeys(final)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _build(work, srs_path, ident, say)
        try:
            os.rename(work, final)
        except OSError:  # another builder finished first: its keys are the same
            if not (final / "ready.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return CircuitKeys(final)
