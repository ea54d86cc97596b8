"""The deployment files, checked with the real validators: the README's "Deploying" section (its paths exist, its
`ridpool` commands parse), the systemd unit (systemd-analyze), the Kubernetes manifests (the Kubernetes schemas,
`ridpool check-config` on the ConfigMap's config), the alert rules (promtool) and the Grafana dashboard's windows."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from ridpool.cli import build_parser
from ridpool.daemon.metrics import NAMES

from tests.test_containers import check_config

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "ridpool.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "ridpool.env.example"
KUBE = DEPLOY / "kubernetes"
RULES = DEPLOY / "prometheus" / "ridpool-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "ridpool-alerts.test.yml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
SECRETS = {"AGORA_CUSTOMER_ID", "AGORA_CUSTOMER_SECRET", "RIDPOOL_REDIS_PASSWORD"}
CONFIG_PATH = "/etc/ridpool/ridpool.toml"
# Exported by each replica for itself; every other series is pool-wide, the same on every replica.
PER_REPLICA = {"ridpool_redis_up", "ridpool_acquire_duration_seconds", "ridpool_budget_wait_seconds"}


def deploy_section() -> str:
    """The README's "Deploying" subsection of "Operations", up to the next heading of its level or above."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^### Deploying\n(.*?)(?=^#{2,3} )", text, re.M | re.S)
    assert match, 'the README has no "### Deploying" section'
    return match[1]


def code_of(section: str) -> list[str]:
    """Every line of the section's code blocks, and every inline code span outside them."""
    blocks = re.findall(r"^```\w*\n(.*?)^```", section, re.M | re.S)
    prose = re.sub(r"^```\w*\n.*?^```", "", section, flags=re.M | re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", prose)


def commands_of(snippet: str) -> list[list[str]]:
    """The shell commands of one line of code: split at && ; | and at a comment, each as its words."""
    words = shlex.split(snippet, comments=True)
    commands: list[list[str]] = [[]]
    for word in words:
        if word in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def ridpool_commands(section: str) -> list[list[str]]:
    """Each `ridpool ...` command the section shows (also as /opt/ridpool/bin/ridpool), as its arguments."""
    found = []
    for snippet in code_of(section):
        if "ridpool " not in snippet:
            continue
        for command in commands_of(snippet):
            words = list(itertools.dropwhile(lambda w: re.fullmatch(r"\w+=.*", w), command))  # VAR=value first
            if len(words) > 1 and Path(words[0]).name == "ridpool":
                found.append(words[1:])
    return found


def repo_paths(section: str) -> set[str]:
    """Relative paths the section names: any word of its code with a slash (not a URL), and the repo's root files."""
    words = {w.strip("\"',;:()") for snippet in code_of(section) for w in re.split(r"[\s=]+", snippet)}
    paths = {w for w in words if "/" in w and "://" not in w and not w.startswith(("/", "$", "<", "-"))}
    return paths | {w for w in words if re.fullmatch(r"Dockerfile|\.dockerignore|[\w-]+\.ya?ml", w)}


def test_the_deploy_section_names_only_paths_that_exist() -> None:
    """Every file or folder the "Deploying" section names is in the repository."""
    paths = repo_paths(deploy_section())
    assert {"deploy/systemd/ridpool.service", "deploy/kubernetes/", "examples/go/main.go"} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"the README names files that do not exist: {missing}"


def test_the_deploy_sections_host_paths_are_the_ones_the_files_use() -> None:
    """Each /etc/ridpool path and the venv's ridpool the section names are ones a unit, manifest or compose file
    uses."""
    files = " ".join(p.read_text() for p in [*DEPLOY.rglob("*.y*ml"), UNIT, ROOT / "docker-compose.yml"])
    named = set(re.findall(r"/etc/ridpool[\w./-]*|/opt/ridpool/bin/ridpool", deploy_section()))
    assert {CONFIG_PATH, "/etc/ridpool/ridpool.env", "/opt/ridpool/bin/ridpool"} <= named
    assert not {p for p in named if p.rstrip("/.") not in files}


def test_every_ridpool_command_of_the_deploy_section_parses_with_the_cli() -> None:
    """Each `ridpool ...` command shown (FILE for a path) is one the real argparse parser accepts."""
    parser = build_parser()
    commands = ridpool_commands(deploy_section())
    assert {"run", "check-config", "status"} <= {c[0] for c in commands}
    for args in commands:
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"the README shows a command the CLI refuses: ridpool {shlex.join(args)}")


# -- systemd ------------------------------------------------------------------------------------------------


def unit() -> dict[str, dict[str, list[str]]]:
    """The unit's directives by section; a directive may be given more than once."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            sections[section][key].append(value)
    return sections


def test_the_unit_runs_the_daemon_on_the_documented_config_and_reloads_with_sighup() -> None:
    """ExecStart is `ridpool run -c /etc/ridpool/ridpool.toml` (parsed by the CLI); reload sends SIGHUP; the
    secrets come from the environment file, whose example holds exactly the three secrets."""
    service = unit()["Service"]
    [start] = service["ExecStart"]
    program, *args = shlex.split(start)
    assert Path(program).name == "ridpool" and args == ["run", "-c", CONFIG_PATH]
    assert build_parser().parse_args(args).command == "run"
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["EnvironmentFile"] == ["/etc/ridpool/ridpool.env"]
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    assert {line.split("=", 1)[0] for line in lines} == SECRETS and len(lines) == 3


def test_the_unit_is_hardened_and_restarts_on_failure_within_limits() -> None:
    """No capabilities, no privilege gain, a read-only system, three address families; a bounded restart policy
    that leaves an invalid config (exit 2) alone."""
    sections = unit()
    service = sections["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "DynamicUser": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
    }.items():
        assert service[key] == [value], key
    assert 1 <= int(service["RestartSec"][0]) <= 30
    assert int(sections["Unit"]["StartLimitBurst"][0]) >= 3 and int(sections["Unit"]["StartLimitIntervalSec"][0])


def installed_unit(tmp_path: Path) -> Path:
    """The unit with its ExecStart pointing at this venv's ridpool: systemd-analyze checks the program exists."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    ridpool = Path(sys.executable).parent / "ridpool"
    copy = tmp_path / "ridpool.service"
    copy.write_text(UNIT.read_text().replace("/opt/ridpool/bin/ridpool", str(ridpool)))
    return copy


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 and prints nothing (an unknown or misspelled directive is a warning)."""
    done = subprocess.run(
        ["systemd-analyze", "verify", str(installed_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    """The exposure `systemd-analyze security` computes offline is 2.0 or less (of 10; "OK" or better)."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(installed_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-600:] + done.stderr


# -- Kubernetes ---------------------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        [doc] = list(yaml.safe_load_all(path.read_text()))
        found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("path", sorted(KUBE.glob("*.yaml")), ids=lambda p: p.name)
def test_each_manifest_is_valid_against_every_kubernetes_schema_shipped(path: Path) -> None:
    """Strict validation (no unknown field) against each Kubernetes version kubernetes-validate has schemas for."""
    [doc] = list(yaml.safe_load_all(path.read_text()))
    versions = sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split("."))))
    assert len(versions) >= 3
    for version in versions:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_misspelled_field() -> None:
    """The schemas are really applied: a probe spelt `readinesProbe` fails validation."""
    deployment = manifests()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, max(all_versions()), strict=True)


def test_the_configmaps_config_passes_check_config_and_serves_metrics_on_every_interface(tmp_path: Path) -> None:
    """`ridpool check-config` exits 0 on the embedded config; it opens port 9464 on 0.0.0.0 for the probes."""
    text = manifests()["ConfigMap"]["data"]["ridpool.toml"]
    config = tmp_path / "ridpool.toml"
    config.write_text(text)
    done = check_config(config)
    assert done.returncode == 0, done.stderr
    assert tomllib.loads(text)["metrics"] == {"port": 9464, "address": "0.0.0.0"}


def test_the_deployment_runs_two_replicas_of_the_daemon_on_the_configmap() -> None:
    """2 replicas of `ridpool run -c /etc/ridpool/ridpool.toml` (parsed by the CLI), the path being the
    ConfigMap's key in its mount; the image is the one compose builds."""
    kinds = manifests()
    spec = kinds["Deployment"]["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert spec["replicas"] == 2 and container["command"] == ["ridpool"]
    assert build_parser().parse_args(container["args"]).command == "run"
    assert container["args"][-2:] == ["-c", CONFIG_PATH]
    [mount] = container["volumeMounts"]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert f"{mount['mountPath']}/ridpool.toml" == CONFIG_PATH and "ridpool.toml" in kinds["ConfigMap"]["data"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert container["image"] == compose["services"]["ridpool"]["image"]


def test_the_probes_ask_healthz_on_the_metrics_port() -> None:
    """Liveness and readiness are HTTP GETs of /healthz on the container port 9464."""
    [container] = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports.get(get["port"], get["port"]) == 9464, probe


def test_the_credentials_come_from_the_secret_and_the_pod_is_locked_down() -> None:
    """The three secrets are env vars from one Secret; non-root (the image's uid), read-only root, no
    capabilities; requests and limits set."""
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(refs) == SECRETS and all(ref["key"] == name for name, ref in refs.items())
    assert len({ref["name"] for ref in refs.values()}) == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert uid and pod["securityContext"]["runAsUser"] == int(uid[1])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and container["resources"]["limits"]


def test_the_disruption_budget_and_the_service_select_the_deployments_pods() -> None:
    """The PodDisruptionBudget keeps at least one of the 2 replicas; the Service targets their metrics port."""
    kinds = manifests()
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kinds["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budget = kinds["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= budget["minAvailable"] < kinds["Deployment"]["spec"]["replicas"]
    service = kinds["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["ports"]] == ["metrics"]


# -- Prometheus and Grafana ----------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; `./dev test` does as root)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}


def test_promtool_check_rules_accepts_the_alert_rules() -> None:
    """`promtool check rules` parses every expression and template of deploy/prometheus/ridpool-alerts.yml."""
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules_passes_the_alerts_unit_tests() -> None:
    """`promtool test rules`: each alert fires on its input series, and stays silent on the others."""
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_case_firing_and_one_not() -> None:
    """The unit tests expect each alert firing at some time and not firing at another."""
    cases: dict[str, set[bool]] = defaultdict(set)
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    assert {name: {True, False} for name in alerts()} == dict(cases)


def test_the_rules_cover_the_documented_conditions_on_exported_metrics_aggregated_with_max() -> None:
    """Error and conflict states, misses, waste, 429s, no replica, Redis down; each names exported metrics;
    pool-wide series are aggregated with `max by (pool)`, never summed."""
    rules = alerts()
    exprs = {name: " ".join(rule["expr"].split()) for name, rule in rules.items()}
    assert 'ridpool_pool_state{state="error"}' in exprs["RidpoolPoolError"]
    assert 'ridpool_pool_state{state="conflict"}' in exprs["RidpoolPoolConflict"]
    assert "ridpool_misses_total" in exprs["RidpoolMissesGrowing"]
    waste = set(re.findall(r"ridpool_\w+", exprs["RidpoolWasteHigh"]))
    assert {"ridpool_expired_unused_total", "ridpool_acquires_total"} <= waste
    assert "ridpool_agora_rate_limited_total" in exprs["RidpoolRateLimited"]
    assert exprs["RidpoolNoLiveReplica"] == "absent(ridpool_redis_up)"
    assert exprs["RidpoolRedisDown"] == "ridpool_redis_up == 0"
    for name, expr in exprs.items():
        named = set(re.findall(r"\bridpool_[a-z_]+", expr))
        assert named and named <= set(NAMES), f"{name}: {named - set(NAMES)}"
        assert not re.search(r"\bsum\b", expr), name
        for metric in named - PER_REPLICA:
            assert re.search(rf"max by \(pool\) \((\w+\()?{metric}\b", expr), f"{name}: {metric} not max by (pool)"
        assert rules[name]["labels"]["severity"] in ("warning", "critical")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_the_dashboards_windows_are_all_rate_interval() -> None:
    """No fixed `[1m]` or `[5m]`: every range is `$__rate_interval`, so panels fill at 30-60 s scrapes too."""
    ranges = [r for expr in dashboard_exprs() for r in re.findall(r"\[([^\]]*)\]", expr)]
    assert ranges and set(ranges) == {"$__rate_interval"}


def test_every_dashboard_expression_is_promql_that_promtool_accepts(tmp_path: Path) -> None:
    """Each expression, with Grafana's `$__rate_interval` at 1m, passes `promtool check rules` as a recording rule."""
    rules = [
        {"record": f"ridpool:dashboard_{i}", "expr": e.replace("$__rate_interval", "1m")}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
