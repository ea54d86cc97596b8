"""The container setup, checked by reading it (no Docker engine here): docker-compose.yml and its override
deploy/compose/reachable.yml, the Dockerfile, .dockerignore, the pinned versions and the configs they mount. Every
command must be one the CLI has, every path must exist, every package of the image must be pinned."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from ridpool.cli import build_parser

from tests.servers import RedisProc, processes

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTRUCTIONS = [line.split(None, 1) for line in re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines() if line[:1].isalpha()]
REACHABLE: dict[str, Any] = yaml.safe_load((ROOT / "deploy/compose/reachable.yml").read_text())["services"]
CONSTRAINTS = ROOT / "deploy" / "constraints-daemon.txt"
DEMO_ENV = dict(
    line.split("=", 1) for line in (ROOT / "config/demo.env").read_text().splitlines() if line and line[0] != "#"
)
_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _value(match: re.Match[str], env: dict[str, str]) -> str:
    value = env.get(match[1])
    if not value and match[2] == "?":
        raise LookupError(f"compose refuses to start: {match[1]}: {match[3]}")
    return value or (match[3] if match[2] == "-" else "") or ""


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR:-default}` and `${VAR:?error}` with the variables of `env` (none: the defaults)."""
    return _VAR.sub(lambda m: _value(m, env), text)


def instruction(name: str) -> list[str]:
    return [rest for keyword, rest in INSTRUCTIONS if keyword == name]


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ridpool.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_default_profile_runs_redis_and_the_daemon_and_the_demo_adds_the_simulator() -> None:
    """Redis and ridpool have no profile (they run on `docker compose up`); the simulator only in `demo`."""
    assert SERVICES["redis"].get("profiles") is None and SERVICES["ridpool"].get("profiles") is None
    assert SERVICES["simulator"]["profiles"] == ["demo"]


def test_images_are_pinned_to_exact_versions() -> None:
    """The Python base image and Redis are named by an exact version tag, never `latest` or a major alone."""
    [base] = instruction("FROM")
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+(-\w+)?", SERVICES["redis"]["image"])


def test_redis_is_published_nowhere_beyond_loopback() -> None:
    """Redis has no password here: no port of it is published, or only on 127.0.0.1; so is the metrics port."""
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert name != "redis" or str(port).startswith("127.0.0.1:"), port
            if name == "ridpool":
                assert str(port).startswith("127.0.0.1:"), port


def test_every_command_is_one_the_cli_has() -> None:
    """Each service's command parses with the real argparse parser (redis: redis-server)."""
    assert SERVICES["redis"]["command"][0] == "redis-server"
    parser = build_parser()
    assert parser.parse_args(SERVICES["ridpool"]["command"]).command == "run"
    assert parser.parse_args(SERVICES["simulator"]["command"]).command == "simulate"
    [cmd] = instruction("CMD")
    assert parser.parse_args(yaml.safe_load(cmd)).command == "run"
    assert instruction("ENTRYPOINT") == ['["ridpool"]']


@pytest.mark.parametrize(("profile", "env"), [("default", {}), ("demo", DEMO_ENV)])
def test_every_path_compose_names_exists_and_the_config_is_mounted_where_the_daemon_reads_it(
    profile: str, env: dict[str, str]
) -> None:
    """The config file is mounted read-only at the path `run -c` reads, from a file that exists (with the
    defaults, and with config/demo.env); the build context and the env file exist."""
    for name in ("ridpool", "simulator"):
        assert (ROOT / SERVICES[name]["build"]).is_dir()
    [volume] = SERVICES["ridpool"]["volumes"]
    source, target, mode = interpolate(volume, env).split(":")
    assert (ROOT / source).is_file(), f"{profile}: {source} is missing"
    assert mode == "ro" and SERVICES["ridpool"]["command"][-1] == target
    assert "/etc/ridpool/config.toml" in instruction("CMD")[0] and target == "/etc/ridpool/config.toml"


def test_the_image_copies_what_exists_and_bakes_in_no_config() -> None:
    """Every COPY source exists; config/ is not copied (it is mounted); .dockerignore keeps .venv and .git out."""
    for rest in instruction("COPY"):
        *sources, _ = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not source.startswith("config"), "the config is mounted, not baked"
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything out, then only what the image needs back in
    assert {"!pyproject.toml", "!README.md", "!pool/", "!daemon/"} <= set(ignore)
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for rest in instruction("COPY"):
        *sources, _ = rest.split()
        assert {source.rstrip("/") for source in sources} <= included, f"{rest}: kept out by .dockerignore"


def test_the_healthcheck_probes_the_port_the_compose_configs_serve_metrics_on() -> None:
    """HEALTHCHECK asks /healthz on the port both compose configs open on every interface."""
    [check] = instruction("HEALTHCHECK")
    port = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", check)
    assert port and "CMD" in check
    for name in ("compose.toml", "compose-demo.toml"):
        metrics = tomllib.loads((ROOT / "config" / name).read_text())["metrics"]
        assert (metrics["port"], metrics["address"]) == (int(port[1]), "0.0.0.0")
    assert SERVICES["simulator"]["healthcheck"] == {"disable": True}


def test_the_demo_config_points_at_the_compose_services_and_is_valid() -> None:
    """config/compose-demo.toml validates and names Redis and the simulator by service name and port."""
    done = check_config(ROOT / "config/compose-demo.toml")
    assert done.returncode == 0, done.stderr
    config = tomllib.loads((ROOT / "config/compose-demo.toml").read_text())
    assert config["redis"]["url"].startswith("redis://redis:6379")
    port = SERVICES["simulator"]["command"][SERVICES["simulator"]["command"].index("--port") + 1]
    assert config["agora"]["base_url"] == [f"http://simulator:{port}"]


def test_the_default_config_fails_at_start_saying_what_to_set() -> None:
    """config/compose.toml as shipped: exit 2, one problem naming pools[0].appid and the placeholder."""
    done = check_config(ROOT / "config/compose.toml")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pools[0].appid: must be 32 hexadecimal characters" in done.stderr and "SET-ME" in done.stderr


def test_the_demo_env_gives_the_daemon_and_the_simulator_the_same_demo_credentials() -> None:
    """Both services read AGORA_CUSTOMER_ID/SECRET from the same variables, which config/demo.env sets."""
    for name in ("ridpool", "simulator"):
        environment = SERVICES[name]["environment"]
        assert interpolate(environment["AGORA_CUSTOMER_ID"], DEMO_ENV) == "demo-customer"
        assert len(interpolate(environment["AGORA_CUSTOMER_SECRET"], DEMO_ENV)) >= 16


# -- the override whose Redis starters can reach ----------------------------------------------------------------


def reachable(env: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml with deploy/compose/reachable.yml over it, as compose merges them (command and
    healthcheck.test replaced, environment merged, ports added), interpolated with `env`."""
    merged: dict[str, Any] = yaml.safe_load(interpolate(yaml.safe_dump(SERVICES), env))
    for name, override in yaml.safe_load(interpolate(yaml.safe_dump(REACHABLE), env)).items():
        service = merged[name]
        service.update({k: v for k, v in override.items() if k not in ("environment", "healthcheck", "ports")})
        service["environment"] = {**service.get("environment", {}), **override.get("environment", {})}
        service["healthcheck"] = {**service.get("healthcheck", {}), **override.get("healthcheck", {})}
        service["ports"] = [*service.get("ports", []), *override.get("ports", [])]
    return merged


def test_the_override_requires_a_password_publishes_redis_and_hands_the_daemon_the_password() -> None:
    """Without RIDPOOL_REDIS_PASSWORD compose refuses to start; with it, Redis runs with --requirepass <it> on a
    host port on every interface, and the daemon (and the healthcheck) get the same password."""
    assert set(REACHABLE) <= set(SERVICES)
    with pytest.raises(LookupError, match="RIDPOOL_REDIS_PASSWORD"):
        reachable({})
    services = reachable({"RIDPOOL_REDIS_PASSWORD": "pw-7f3a"})
    command = services["redis"]["command"]
    assert command[0] == "redis-server" and command[command.index("--requirepass") + 1] == "pw-7f3a"
    assert services["redis"]["ports"] == ["6379:6379"]
    assert services["ridpool"]["environment"]["RIDPOOL_REDIS_PASSWORD"] == "pw-7f3a"
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == "pw-7f3a"
    assert services["ridpool"]["command"] == SERVICES["ridpool"]["command"]
    assert reachable({"RIDPOOL_REDIS_PASSWORD": "x", "RIDPOOL_REDIS_PORT": "16379"})["redis"]["ports"] == ["16379:6379"]


@pytest.mark.integration
def test_redis_started_as_the_override_starts_it_refuses_a_client_without_the_password() -> None:
    """A real redis-server with the override's arguments: NOAUTH without the password, PONG with it; the
    healthcheck passes only with the password compose gives it."""
    services = reachable({"RIDPOOL_REDIS_PASSWORD": "pw-7f3a"})
    redis_service = services["redis"]
    [kind, check] = redis_service["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and check.startswith("redis-cli ")
    with processes(RedisProc(*redis_service["command"][1:])) as [server]:
        with server.client() as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with server.client(password="pw-7f3a") as client:
            assert client.ping()
        probe = check.replace("redis-cli ", f"redis-cli -p {server.port} ", 1)
        for auth, healthy in ((redis_service["environment"]["REDISCLI_AUTH"], True), ("wrong", False)):
            env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": auth}
            done = subprocess.run(["sh", "-c", probe], env=env, capture_output=True, timeout=10, check=False)
            assert (done.returncode == 0) == healthy, auth


# -- pinned Python packages -------------------------------------------------------------------------------------


def pins() -> dict[str, str]:
    lines = [line for line in CONSTRAINTS.read_text().splitlines() if line and not line.startswith("#")]
    found = {}
    for line in lines:
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[\w.]+", version), f"not pinned to one version: {line}"
        found[canonicalize_name(name)] = version
    return found


def image_dependencies() -> dict[str, list[Requirement]]:
    """What `pip install '.[daemon]'` installs, walked through the installed packages' metadata (markers for this
    Python, which the image's matches): name -> the requirements that bring it."""
    seen: dict[str, list[Requirement]] = {}
    todo = [("ridpool", {"daemon"})]
    while todo:
        name, extras = todo.pop()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras or {""}):
                continue
            key = canonicalize_name(requirement.name)
            if key == "ridpool":
                continue
            if key not in seen:
                todo.append((requirement.name, set(requirement.extras)))
            seen.setdefault(key, []).append(requirement)
    return seen


def test_every_python_package_of_the_image_is_pinned_to_an_exact_version() -> None:
    """Each package the daemon extra brings, however deep, has a `==` line in deploy/constraints-daemon.txt, at a
    version each requirement on it allows; the Dockerfile installs with `-c` that file."""
    pinned = pins()
    needed = image_dependencies()
    assert {"httpx", "redis", "hiredis", "pydantic", "pydantic-core", "structlog"} <= set(needed)
    missing = sorted(set(needed) - set(pinned))
    assert not missing, f"not pinned in {CONSTRAINTS.name}: {missing} (regenerate it, see its header)"
    for name, requirements in needed.items():
        for requirement in requirements:
            assert requirement.specifier.contains(pinned[name], prereleases=True), f"{requirement} vs {pinned[name]}"
    [install] = [rest for rest in instruction("RUN") if "pip install" in rest]
    assert f"-c {CONSTRAINTS.relative_to(ROOT)} '.[daemon]'" in install
