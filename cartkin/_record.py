"""Run records: package versions, data hashes."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from pathlib import Path


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in ("cartkin", "jax", "jaxlib", "diffrax", "equinox", "optax", "numpy", "pandas", "arviz"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
