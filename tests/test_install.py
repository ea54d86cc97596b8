"""The package as a user installs it: one wheel into a fresh venv, the base install, then the daemon extra.

Slow (a venv, two pip installs from the package index this machine uses), so the wheel is built once and one
venv serves every step, in the order a user would take them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from ridpool.keys import pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, SECRET, run_until_filled, web_config_toml
from tests.poolkit import fill, publish_pool

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).parent.parent
SOURCES = ("pool", "daemon", "pyproject.toml", "README.md")


@dataclass(frozen=True)
class Venv:
    root: Path
    wheel: Path

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """Run in the venv, from a folder holding no `pool` or `daemon` (so imports see only what is installed)."""
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={**clean, **env},
            check=False,
        )

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.bin("python"), "-c", code)

    def pip_install(self, requirement: str) -> None:
        done = self.run(self.bin("python"), "-m", "pip", "install", "-q", requirement, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh venv with the base install of a wheel built from a copy of the sources."""
    work = tmp_path_factory.mktemp("install")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (work / "dist").glob("ridpool-*.whl")
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(work / "venv")], capture_output=True, timeout=120, check=False
    )
    assert made.returncode == 0, made.stderr
    env = Venv(work / "venv", wheel)
    env.pip_install(str(wheel))
    yield env


def test_the_base_install_pops_and_nothing_else_comes_with_it(venv: Venv, r: redis.Redis, redis_url: str) -> None:
    """`pip install ridpool`: `from ridpool import PoolClient` works, no top-level pool/daemon module, no daemon
    dependency; `pop`, `status` and `--version` run, while `run`, `demo` and `simulate` name the extra in one line."""
    imports = venv.python(
        "import importlib.util as u, ridpool\n"
        "from ridpool import PoolClient, AsyncPoolClient, PoolEmpty\n"
        "print([m for m in ('pool', 'daemon', 'httpx', 'apscheduler', 'pydantic', 'structlog', 'rich', 'tenacity',"
        " 'prometheus_client') if u.find_spec(m)])"
    )
    assert imports.returncode == 0 and imports.stdout.strip() == "[]", imports.stdout + imports.stderr
    for module in ("pool", "daemon"):
        assert venv.python(f"import {module}").returncode != 0
    version = venv.run(venv.bin("ridpool"), "--version")
    assert version.returncode == 0 and version.stdout.strip() == "ridpool 0.1.0"

    publish_pool(r, PREFIX, "web")
    [entry] = fill(r, PREFIX, "web", 1)
    popped = venv.run(venv.bin("ridpool"), "pop", "web", "--redis-url", redis_url, "--prefix", PREFIX)
    assert popped.returncode == 0 and entry.resource_id in popped.stdout, popped.stderr
    status = venv.run(venv.bin("ridpool"), "status", "--prefix", PREFIX, RIDPOOL_REDIS_URL=redis_url)
    assert status.returncode == 0 and "web" in status.stdout, status.stderr

    for command in (["run", "-c", "x.toml"], ["demo"], ["simulate"]):
        done = venv.run(venv.bin("ridpool"), *command)
        assert done.returncode == 1 and "pip install 'ridpool[daemon]'" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_with_the_daemon_extra_run_fills_a_pool_and_demo_runs(
    venv: Venv, tmp_path: Path, r: redis.Redis, redis_url: str
) -> None:
    """`pip install 'ridpool[daemon]'`: `ridpool run` fills a pool and stops on SIGTERM with exit 0; `ridpool demo`
    runs with the config it ships (no checkout needed)."""
    venv.pip_install(f"{venv.wheel}[daemon]")
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET) as sim:
        config = tmp_path / "ridpool.toml"
        config.write_text(web_config_toml(redis_url, sim.url, 3))
        queue = pool_keys(PREFIX, "web").queue(None)
        done, _ = run_until_filled(
            [venv.bin("ridpool"), "run", "-c", str(config)], lambda: r.zcard(queue) == 3, cwd=venv.root
        )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    demo = venv.run(venv.bin("ridpool"), "demo", "--duration", "2", timeout=60)
    assert demo.returncode == 0 and "demo stopped" in demo.stdout, demo.stdout[-2000:] + demo.stderr[-2000:]
