"""Layers point one way: the starters' library (pool/, installed as `ridpool`) never imports the daemon
(`ridpool.daemon`), not even inside a function; the daemon reaches it only through the entry points it registers."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
POOL = sorted((ROOT / "pool").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (functions and TYPE_CHECKING blocks included), and every string
    handed to importlib.import_module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
    return found


@pytest.mark.parametrize("path", POOL, ids=lambda p: p.name)
def test_no_module_of_the_starters_library_imports_the_daemon(path: Path) -> None:
    """Not at the top, not inside a function, not for type checking: pool/ names no ridpool.daemon module."""
    daemon = sorted(m for m in imported_modules(path) if m == "ridpool.daemon" or m.startswith("ridpool.daemon."))
    assert daemon == [], f"{path.name} imports {daemon}"


def test_the_starter_side_runs_without_loading_any_daemon_module() -> None:
    """Importing the clients, the CLI's starter commands, status and settings loads nothing of ridpool.daemon."""
    code = (
        "import sys\n"
        "import ridpool, ridpool.client, ridpool.aio, ridpool.status, ridpool.settings, ridpool.plugins\n"
        "from ridpool.cli import build_parser\n"
        "build_parser(plugins_too=False).parse_args(['pop', 'web', '--redis-url', 'redis://127.0.0.1:1/0'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('ridpool.daemon')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_daemon_registers_its_commands_and_acquirer_as_entry_points() -> None:
    """pyproject.toml declares the daemon's subcommands and the acquirer; each names an object that exists."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = project["entry-points"]
    assert set(groups["ridpool.commands"]) >= {"run", "check-config", "demo", "simulate"}
    assert set(groups["ridpool.acquirers"]) == {"agora"}
    for group in groups.values():
        for target in group.values():
            module, _, name = target.partition(":")
            assert module.startswith("ridpool.daemon."), target
            assert getattr(__import__(module, fromlist=[name]), name) is not None
