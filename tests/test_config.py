"""Configuration loading and validation: pure, no Redis."""

import copy
import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
from ridpool.daemon.config import (
    Config,
    Credentials,
    PoolConfig,
    _problem,
    load_config,
    load_credentials,
    parse_config,
)
from ridpool.daemon.demo import DEMO_CONFIG
from ridpool.errors import ConfigError, RidpoolError

CONFIG_DIR = Path(__file__).parent.parent / "config"
APPID = "0123456789abcdef0123456789abcdef"
SECRET = "s3cr3t-0f-the-account"


def valid() -> dict[str, Any]:
    """A valid config as parsed TOML: a template pool, a cnames pool with a uid_range, a literal channel pool."""
    return {
        "redis": {"url": "redis://127.0.0.1:6379/0", "key_prefix": "ridpool"},
        "agora": {"base_url": "https://api.sd-rtn.com", "rate_limit": 8},
        "pools": [
            {"name": "web", "appid": APPID, "cname": "web-{uuid}", "uid": "527841", "scene": 1, "size": 2},
            {"name": "rooms", "appid": APPID, "cnames": ["room-1", "room-2"], "uid_range": [900000, 999999]},
            {"name": "lobby", "appid": APPID, "cname": "lobby", "uid": "7"},
        ],
    }


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def paths_of(problems: list[str]) -> list[str]:
    return [problem.split(": ", 1)[0] for problem in problems]


def setter(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets `a.b[1].c` in the config (or deletes it when value is DELETE)."""

    def mutate(data: dict[str, Any]) -> None:
        keys: list[str | int] = [int(k) if k.isdigit() else k for k in re.findall(r"\w+", path)]
        node: Any = data
        for key in keys[:-1]:
            node = node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return mutate


DELETE = object()


def both(*changes: tuple[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Several setters applied in turn (rules that need more than one field set)."""

    def apply(data: dict[str, Any]) -> None:
        for path, value in changes:
            setter(path, value)(data)

    return apply


INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("uid 0", setter("pools[0].uid", "0"), "pools[0].uid"),
    ("uid 2**32", setter("pools[0].uid", str(2**32)), "pools[0].uid"),
    ("uid not digits", setter("pools[0].uid", "52x"), "pools[0].uid"),
    ("uid leading zero", setter("pools[0].uid", "0527841"), "pools[0].uid"),
    ("uid as a TOML int", setter("pools[0].uid", 527841), "pools[0].uid"),
    ("cname and cnames", setter("pools[1].cname", "room-9"), "pools[1].cname"),
    ("neither cname nor cnames", setter("pools[2].cname", DELETE), "pools[2].cname"),
    ("uid and uid_range", setter("pools[1].uid", "5"), "pools[1].uid"),
    ("neither uid nor uid_range", setter("pools[2].uid", DELETE), "pools[2].uid"),
    ("64-byte cname, scene 0", setter("pools[2].cname", "a" * 64), "pools[2].cname"),
    ("64-byte cname, scene 2", lambda d: d["pools"][2].update(scene=2, cname="é" * 32), "pools[2].cname"),
    ("empty cname, scene 0", setter("pools[2].cname", ""), "pools[2].cname"),
    ("bad channel character", setter("pools[2].cname", "room/1"), "pools[2].cname"),
    ("bad character in cnames", setter("pools[1].cnames", ["room-1", "room*2"]), "pools[1].cnames[1]"),
    ("template with scene 0", setter("pools[0].scene", 0), "pools[0].cname"),
    ("unknown placeholder", setter("pools[0].cname", "web-{id}"), "pools[0].cname"),
    ("unmatched brace in template", setter("pools[0].cname", "web-{uuid"), "pools[0].cname"),
    ("129-byte label", setter("pools[0].cname", "w" * 97 + "{uuid}"), "pools[0].cname"),
    ("129-byte literal label", setter("pools[0].cname", "w" * 129), "pools[0].cname"),
    ("template in cnames", lambda d: d["pools"][1].update(scene=1, cnames=["room-{n}"]), "pools[1].cnames[0]"),
    ("empty cnames", setter("pools[1].cnames", []), "pools[1].cnames"),
    ("repeated cnames", setter("pools[1].cnames", ["a", "a"]), "pools[1].cnames"),
    ("region", setter("pools[0].region", "US"), "pools[0].region"),
    ("resource_expired_hour 0", setter("pools[0].resource_expired_hour", 0), "pools[0].resource_expired_hour"),
    ("resource_expired_hour 721", setter("pools[0].resource_expired_hour", 721), "pools[0].resource_expired_hour"),
    ("scene 3", setter("pools[0].scene", 3), "pools[0].scene"),
    ("max_age 0", setter("pools[0].max_age", 0), "pools[0].max_age"),
    ("max_age 300", setter("pools[0].max_age", 300), "pools[0].max_age"),
    ("size -1", setter("pools[0].size", -1), "pools[0].size"),
    ("pool max_in_flight 0", setter("pools[0].max_in_flight", 0), "pools[0].max_in_flight"),
    ("region_affinity 5", setter("pools[0].region_affinity", 5), "pools[0].region_affinity"),
    ("empty excluded id", setter("pools[0].exclude_resource_ids", [""]), "pools[0].exclude_resource_ids[0]"),
    (
        "startParameter with a date",
        setter("pools[0].start_parameter", {"x": datetime.date(2024, 1, 1)}),
        "pools[0].start_parameter",
    ),
    ("duplicate pool names", setter("pools[2].name", "web"), "pools[2].name"),
    ("bad pool name", setter("pools[0].name", "web pool"), "pools[0].name"),
    ("missing pool name", setter("pools[0].name", DELETE), "pools[0].name"),
    ("bad appid", setter("pools[0].appid", APPID[:-1] + "g"), "pools[0].appid"),
    ("uid_range reversed", setter("pools[1].uid_range", [999999, 900000]), "pools[1].uid_range"),
    ("uid_range of 0", setter("pools[1].uid_range", [0, 10]), "pools[1].uid_range"),
    ("uid_range of three", setter("pools[1].uid_range", [1, 2, 3]), "pools[1].uid_range"),
    # size 0 x 2 cnames + max_in_flight 5 live entries need 5 uids
    ("uid_range too small", setter("pools[1].uid_range", [1, 4]), "pools[1].uid_range"),
    ("unknown pool key", setter("pools[0].sise", 20), "pools[0].sise"),
    ("unknown agora key", setter("agora.rate", 8), "agora.rate"),
    ("unknown top-level key", setter("pool", []), "pool"),
    ("warnings from the file", setter("warnings", []), "warnings"),
    ("rate_limit 0", setter("agora.rate_limit", 0), "agora.rate_limit"),
    ("jitter above half a second", setter("agora.jitter", 0.6), "agora.jitter"),
    ("negative jitter", setter("agora.jitter", -0.01), "agora.jitter"),
    ("timeout 61", setter("agora.timeout", 61), "agora.timeout"),
    ("agora max_in_flight 0", setter("agora.max_in_flight", 0), "agora.max_in_flight"),
    ("bad account", setter("agora.account", "a/b"), "agora.account"),
    ("bool as int", setter("pools[0].size", True), "pools[0].size"),
    ("bool as float", setter("agora.rate_limit", True), "agora.rate_limit"),
    ("bool as scene", setter("pools[0].scene", True), "pools[0].scene"),
    ("base_url with a path", setter("agora.base_url", "https://api.sd-rtn.com/v1"), "agora.base_url"),
    ("base_url not http", setter("agora.base_url", "ftp://api.sd-rtn.com"), "agora.base_url"),
    ("bad host in a list", setter("agora.base_url", ["https://api.agora.io", "api.sd-rtn.com"]), "agora.base_url[1]"),
    ("empty base_url list", setter("agora.base_url", []), "agora.base_url"),
    ("missing base_url", setter("agora.base_url", DELETE), "agora.base_url"),
    ("missing agora", setter("agora", DELETE), "agora"),
    ("key_prefix with braces", setter("redis.key_prefix", "rid{pool}"), "redis.key_prefix"),
    ("redis url scheme", setter("redis.url", "http://127.0.0.1:6379"), "redis.url"),
    ("socket_timeout 0", setter("redis.socket_timeout", 0), "redis.socket_timeout"),
    ("unknown redis mode", setter("redis.mode", "replica"), "redis.mode"),
    ("cluster asked in the url", setter("redis.url", "redis://127.0.0.1:6379/0?cluster=true"), "redis.url"),
    ("sentinels without sentinel mode", setter("redis.sentinels", ["127.0.0.1:26379"]), "redis.sentinels"),
    ("service_name without sentinel mode", setter("redis.service_name", "mymaster"), "redis.service_name"),
    (
        "sentinel mode without sentinels",
        both(("redis.mode", "sentinel"), ("redis.service_name", "m")),
        "redis.sentinels",
    ),
    (
        "sentinel mode without service_name",
        both(("redis.mode", "sentinel"), ("redis.sentinels", ["127.0.0.1:26379"])),
        "redis.service_name",
    ),
    (
        "a sentinel without a port",
        both(("redis.mode", "sentinel"), ("redis.service_name", "m"), ("redis.sentinels", ["127.0.0.1"])),
        "redis.sentinels[0]",
    ),
    ("tls_ca_file without rediss", setter("redis.tls_ca_file", __file__), "redis.tls_ca_file"),
    (
        "tls_ca_file that is not there",
        both(("redis.url", "rediss://127.0.0.1:6380/0"), ("redis.tls_ca_file", "/nonexistent/ca.pem")),
        "redis.tls_ca_file",
    ),
    ("allow_eviction not a bool", setter("redis.allow_eviction", "yes"), "redis.allow_eviction"),
    ("empty pools", setter("pools", []), "pools"),
    ("no pools", setter("pools", DELETE), "pools"),
    ("pool not a table", setter("pools[0]", "web"), "pools[0]"),
]


@pytest.mark.parametrize(("mutate", "path"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_each_invalid_config_is_refused_naming_the_field(mutate: Callable[[dict[str, Any]], None], path: str) -> None:
    """Each rule refuses its violation with a problem under the exact field path, and nothing else."""
    data = valid()
    mutate(data)
    problems = problems_of(data)
    assert paths_of(problems) == [path], problems
    assert "Value error" not in problems[0]
    assert "pydantic" not in problems[0]


def test_example_config_loads_with_its_derived_values() -> None:
    """config/example.toml loads as documented: template web pool and three-room pool with a uid range."""
    config = load_config(CONFIG_DIR / "example.toml")
    web, rooms = config.pools
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    assert config.redis.key_prefix == "ridpool"
    assert config.agora.base_url == ("https://api.sd-rtn.com",)
    assert config.agora.rate_limit == 8
    assert config.warnings == ()
    assert web.is_template
    assert web.slots == ("",)
    assert web.client_request() == {"region": "NA", "resourceExpiredHour": 24, "scene": 1}
    assert (web.size, web.max_age, web.max_in_flight, web.uid) == (20, 270, None, "527841")  # None: derived
    assert re.fullmatch(r"web-[0-9a-f]{32}", web.expand_cname())
    assert not rooms.is_template
    assert rooms.slots == ("room-1", "room-2", "room-3")
    assert rooms.uid_range == (900000, 999999)
    assert rooms.client_request() == {}


def test_demo_config_loads_with_its_derived_values() -> None:
    """The demo's config (package data of ridpool.daemon) loads: web template pool of 10 aged at most 60 s, three
    rooms of 3 aged at most 120 s."""
    config = load_config(str(DEMO_CONFIG))
    web, rooms = config.pools
    assert config.agora.base_url == ("http://127.0.0.1:18080",)
    assert config.agora.rate_limit == 8
    assert config.warnings == ()
    assert (web.name, web.slots, web.uid, web.size, web.max_age) == ("web", ("",), "527841", 10, 60)
    assert web.client_request() == {"scene": 1}
    assert (rooms.name, rooms.slots, rooms.size, rooms.max_age) == ("rooms", ("room-1", "room-2", "room-3"), 3, 120)
    assert rooms.uid_range == (900000, 999999)


def test_max_age_problem_reads_as_documented() -> None:
    """A violation reads `path: reason (got value)`, in the operator's own terms."""
    data = valid()
    data["pools"][0]["max_age"] = 300
    assert problems_of(data) == ["pools[0].max_age: must be greater than 0 and below 300 (got 300)"]


def test_all_violations_in_one_file_are_reported_together() -> None:
    """Problems in every section, and field and cross-field problems in one pool, come in one ConfigError."""
    data = valid()
    data["redis"]["key_prefix"] = "a b"
    data["agora"]["rate_limit"] = 0
    data["pools"][0].update(size=-1, cname="web-{id}")  # field problem beside a cross-field problem
    data["pools"][1].update(uid_range=[1, 2], sise=3)
    data["pools"][2]["name"] = "web"
    problems = problems_of(data)
    assert sorted(paths_of(problems)) == sorted(
        [
            "redis.key_prefix",
            "agora.rate_limit",
            "pools[0].size",
            "pools[0].cname",
            "pools[1].uid_range",
            "pools[1].sise",
            "pools[2].name",
        ]
    ), problems


def test_missing_file_is_one_problem_naming_it(tmp_path: Path) -> None:
    """A missing file gives exactly one problem: its path, 'file not found'."""
    path = tmp_path / "config.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}: file not found"]
    assert isinstance(caught.value, RidpoolError)


def test_toml_syntax_error_is_one_problem_with_line_and_column(tmp_path: Path) -> None:
    """Broken TOML gives exactly one problem naming the file, the line and the column."""
    path = tmp_path / "bad.toml"
    path.write_text('[redis]\nurl = "redis://x"\nkey_prefix = \n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: invalid TOML at line 3, column ")


def test_high_rate_limit_and_uids_warn_but_load() -> None:
    """A rate above 10/s and uids above 2^31-1 are warnings with exact wording, never refusals."""
    data = valid()
    data["agora"]["rate_limit"] = 12
    data["pools"][0]["uid"] = "3000000000"
    data["pools"][1]["uid_range"] = [2**31, 2**32 - 1]
    config = parse_config(data)
    assert config.warnings == (
        "agora.rate_limit: 12 is above Agora's default 10/s quota; make sure Agora raised it for this account",
        "pools[0].uid: 3000000000 is above 2^31-1; Agora has been seen to reject such uids with code 2",
        "pools[1].uid_range: 4294967295 is above 2^31-1; Agora has been seen to reject such uids with code 2",
    )


def test_limits_are_inclusive_where_agora_allows() -> None:
    """63-byte channels, 128-byte labels, braces in scene-0 names and a uid_range of exactly the live count load."""
    data = valid()
    data["pools"][0]["cname"] = "w" * 96 + "{uuid}"  # 128 bytes at its longest
    data["pools"][1].update(size=2, max_in_flight=3, uid_range=[10, 16])  # 2 x 2 + 3 = 7 uids
    data["pools"][2]["cname"] = "{x}" + "a" * 60  # 63 bytes, braces are literal under scene 0
    data["agora"]["base_url"] = ["https://api.sd-rtn.com/", "https://api.agora.io"]
    config = parse_config(data)
    literal = config.pools[2]
    assert not literal.is_template
    assert literal.slots == (literal.cname,)
    assert literal.expand_cname() == "{x}" + "a" * 60
    assert config.agora.base_url == ("https://api.sd-rtn.com", "https://api.agora.io")


def test_template_expansions_are_fresh() -> None:
    """{uuid} becomes 32 hex characters and {n} at most 10 digits, new at each call."""
    pool = PoolConfig(name="p", appid=APPID, cname="s-{n}-{uuid}", uid="1", scene=1)
    labels = {pool.expand_cname() for _ in range(20)}
    assert len(labels) == 20
    assert all(re.fullmatch(r"s-[0-9]{1,10}-[0-9a-f]{32}", label) for label in labels)


def test_client_request_holds_every_set_field() -> None:
    """clientRequest carries each set field under Agora's name, and a copy the caller may change."""
    pool = PoolConfig(
        name="p",
        appid=APPID,
        cname="c",
        uid="1",
        scene=2,
        region="EU",
        resource_expired_hour=1,
        start_parameter={"recordingConfig": {"maxIdleTime": 30}},
        exclude_resource_ids=("old",),
        region_affinity=0,
    )
    request = pool.client_request()
    assert request == {
        "region": "EU",
        "resourceExpiredHour": 1,
        "scene": 2,
        "startParameter": {"recordingConfig": {"maxIdleTime": 30}},
        "excludeResourceIds": ["old"],
        "regionAffinity": 0,
    }
    request["startParameter"]["recordingConfig"]["maxIdleTime"] = 1  # type: ignore[index]
    assert pool.client_request() == request | {"startParameter": {"recordingConfig": {"maxIdleTime": 30}}}


def test_models_built_in_code_enforce_the_same_rules_and_are_frozen() -> None:
    """PoolConfig built directly still checks cross-field rules; a loaded Config cannot be changed."""
    with pytest.raises(pydantic.ValidationError):
        PoolConfig(name="p", appid=APPID, cname="web-{uuid}", uid="1", scene=0)
    config = parse_config(valid())
    with pytest.raises(pydantic.ValidationError):
        config.pools[0].size = 3
    assert isinstance(config, Config)


def test_missing_credentials_name_each_variable() -> None:
    """Missing or empty AGORA_CUSTOMER_ID / AGORA_CUSTOMER_SECRET are each named."""
    with pytest.raises(ConfigError) as caught:
        load_credentials({"AGORA_CUSTOMER_SECRET": ""})
    assert paths_of(caught.value.problems) == ["AGORA_CUSTOMER_ID", "AGORA_CUSTOMER_SECRET"]
    with pytest.raises(ConfigError) as caught:
        load_credentials({"AGORA_CUSTOMER_ID": "cid"})
    assert paths_of(caught.value.problems) == ["AGORA_CUSTOMER_SECRET"]


def test_credentials_never_show_the_secret() -> None:
    """The secret is in basic_auth only: never in repr, str, or any error text."""
    credentials = load_credentials({"AGORA_CUSTOMER_ID": "cid", "AGORA_CUSTOMER_SECRET": SECRET})
    assert credentials.basic_auth() == ("cid", SECRET)
    assert SECRET not in repr(credentials)
    assert SECRET not in str(credentials)
    assert isinstance(credentials, Credentials)
    with pytest.raises(ConfigError) as caught:
        load_credentials({"AGORA_CUSTOMER_ID": "c:d", "AGORA_CUSTOMER_SECRET": f" {SECRET}\n"})
    assert SECRET not in str(caught.value)
    assert paths_of(caught.value.problems) == ["AGORA_CUSTOMER_SECRET", "AGORA_CUSTOMER_ID"]


def test_passwords_in_urls_are_not_echoed() -> None:
    """A URL refused for holding credentials, or a bad Redis URL, is reported without the password in it."""
    data = copy.deepcopy(valid())
    data["agora"]["base_url"] = f"https://cid:{SECRET}@api.sd-rtn.com"
    data["redis"]["url"] = f"http://user:{SECRET}@127.0.0.1"
    problems = problems_of(data)
    assert paths_of(problems) == ["redis.url", "agora.base_url"]
    assert SECRET not in "\n".join(problems)


@pytest.mark.parametrize(
    ("kind", "ctx", "value", "problem"),
    [
        ("missing", None, {}, "agora: required"),
        ("extra_forbidden", None, 1, "agora: unknown field"),
        ("int_type", None, True, "agora: must be an integer (got true)"),
        ("value_error", {"error": ValueError("must be 0 to 4 (got 5)")}, 5, "agora: must be 0 to 4 (got 5)"),
        ("rule", {"m": "give exactly one of a or b"}, None, "agora: give exactly one of a or b"),
        ("literal_error", {"expected": "'CN' or 'NA'"}, "US", "agora: must be 'CN' or 'NA' (got \"US\")"),
        ("too_long", {"max_length": 2, "actual_length": 3}, [1, 2, 3], "agora: must have at most 2 items, not 3"),
        ("too_short", {"min_length": 1, "actual_length": 0}, [], "agora: must have at least 1 items, not 0"),
        ("uuid_parsing", {}, "x", 'agora: is not valid (uuid_parsing) (got "x")'),
    ],
)
def test_problems_are_worded_from_the_error_type_and_context_never_from_pydantics_message(
    kind: str, ctx: dict[str, Any] | None, value: object, problem: str
) -> None:
    """Whatever English pydantic puts in `msg`, the problem is built from the error's type and context."""
    error: Any = {"type": kind, "loc": ("agora",), "msg": "Pydantic's wording, which may change", "input": value}
    if ctx is not None:
        error["ctx"] = ctx
    assert _problem(error) == problem


@pytest.mark.parametrize(
    ("mutate", "named", "says"),
    [
        (
            setter("pools[1].cnames", [f"room-{i}" for i in range(100_001)]),
            "pools[1].cnames",
            "names 100001 channels; a pool may name at most 100000",
        ),
        (setter("pools[0].size", 2000), "pools", "the standing sizes need 7.4 acquires/s"),
    ],
)
def test_what_no_daemon_can_serve_is_refused_with_the_figure(
    mutate: Callable[[dict[str, Any]], None], named: str, says: str
) -> None:
    """check-config refuses a pool of more channels than one daemon serves, and standing sizes the budget cannot
    renew within max_age, saying by how much."""
    data = valid()
    mutate(data)
    found = problems_of(data)
    assert [p for p in found if p.startswith(f"{named}: ") and says in p], found
