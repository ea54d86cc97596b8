"""The installed version of ridpool, read from the package's metadata: pyproject.toml is the one place it is
written (`ridpool --version`, and each replica's entry in the live replicas)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed() -> str:
    try:
        return version("ridpool")
    except PackageNotFoundError:
        return "unknown (not installed)"
