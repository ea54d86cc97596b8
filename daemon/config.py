"""The daemon's configuration: one TOML file, validated once into frozen typed objects.

Every violation in a file is reported at once as `field.path: reason`, so an operator fixes a config in one
pass. Cross-field rules (cname against scene, uid_range against pool size) still run when other fields of the
same table are wrong. Credentials come from the environment only and never appear in any message.
"""

import copy
import json
import math
import os
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    Strict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from ridpool import channels, settings
from ridpool.budget import REFILL_MAX_WAIT, Account, window_for
from ridpool.daemon import freshness, planner, warmups
from ridpool.errors import ConfigError
from ridpool.functions import MAX_WAIT
from ridpool.keys import NAME_PATTERN, PREFIX_PATTERN
from ridpool.settings import PoolInfo, RedisTarget, Settings

UID_MAX = 2**32 - 1
AUTO_IN_FLIGHT_UIDS = 8  # uids a uid_range must spare for acquires in flight when max_in_flight is derived
UID_WARN_ABOVE = 2**31 - 1  # Agora has been seen to answer code 2 above this
AGORA_DEFAULT_RATE = 10.0
# One replica's concurrent acquires when agora.max_in_flight is not set: a second of the budget, within these.
DEFAULT_IN_FLIGHT, MAX_DERIVED_IN_FLIGHT = 32, 256
# The most channels one pool may name, and the most entries all standing sizes together may ask to keep: what one
# daemon serves (a pool of more channels takes longer than a round to look at after a start, and standing sizes
# beyond what the budget renews within max_age can never be kept full).
MAX_CHANNELS = 100_000
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_DECIMAL = re.compile(r"[1-9][0-9]*")

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str, object]  # where, why, the offending value


def _show(value: object) -> str:
    """A value as the operator wrote it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = json.dumps(value, default=str, ensure_ascii=False) if isinstance(value, str | list | tuple) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(test: Callable[[Any], object], reason: str, *, show: bool = True) -> AfterValidator:
    def validate(value: Any) -> Any:
        if not test(value):
            raise ValueError(f"{reason} (got {_show(value)})" if show else reason)
        return value

    return AfterValidator(validate)


SInt = Annotated[int, Strict()]  # a TOML bool is never an int
SFloat = Annotated[float, Strict()]  # accepts TOML ints, never bools
SStr = Annotated[str, Strict()]
Name = Annotated[SStr, _check(NAME_PATTERN.fullmatch, "must be 1 to 64 characters from A-Z a-z 0-9 _ . -")]
Positive = Annotated[SFloat, _check(lambda x: x > 0, "must be greater than 0")]
AtLeastOne = Annotated[SInt, _check(lambda n: n >= 1, "must be at least 1")]
Prefix = Annotated[SStr, _check(PREFIX_PATTERN.fullmatch, "must be 1 to 64 characters from A-Z a-z 0-9 _ . : -")]
Cnames = Annotated[tuple[SStr, ...], _check(lambda c: c and len(set(c)) == len(c), "must list channels, each once")]
UidRange = Annotated[
    tuple[SInt, SInt],
    _check(lambda r: 1 <= r[0] <= r[1] <= UID_MAX, f"must be [low, high], 1 <= low <= high <= {UID_MAX}"),
]


def _base_url(url: str) -> str:
    if "@" in url.partition("://")[2].partition("/")[0]:
        raise ValueError("must not contain credentials; they come from AGORA_CUSTOMER_ID/AGORA_CUSTOMER_SECRET")
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and parts.hostname and parts.port != 0 and parts.path in ("", "/")
    except ValueError:  # a malformed port or IPv6 address
        ok = False
    if not ok or parts.query or parts.fragment:
        raise ValueError(f"must be an http(s) URL with no path, such as https://api.sd-rtn.com (got {_show(url)})")
    return f"{parts.scheme}://{parts.netloc}"


def _one_or_many_urls(value: object) -> object:
    # A single string is validated here so that its problems are named `agora.base_url`, not `[0]`.
    return [_base_url(value)] if isinstance(value, str) else value


def _redis_url(url: str) -> str:
    if "cluster" in parse_qs(urlsplit(url).query):
        raise ValueError('must not choose the mode; set [redis] mode = "cluster" instead of ?cluster= in the URL')
    problem = settings.url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url


def _auto_size(value: object) -> object:
    if value is True or value is False or value == "forecast":
        return value
    raise ValueError(f'must be true, false or "forecast" (got {_show(value)})')


def _uid(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'must be a string: write uid = "{value}"')
    return value


Uid = Annotated[
    SStr,
    BeforeValidator(_uid),
    _check(lambda u: _DECIMAL.fullmatch(u) and int(u) <= UID_MAX, f"must be 1 to {UID_MAX}"),
]
BaseUrls = Annotated[
    tuple[Annotated[SStr, AfterValidator(_base_url)], ...],
    BeforeValidator(_one_or_many_urls),
    _check(lambda urls: urls and len(set(urls)) == len(urls), "must name one or more hosts, each once"),
]


def _json_only(value: Any, where: str = "") -> Any:
    """Reject what TOML has and JSON has not (dates, times, nan, inf): startParameter goes to Agora as JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            _json_only(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _json_only(item, f"{where}[{i}]")
    elif not isinstance(value, str | int | float) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{where or 'value'} is {_show(value)}, which is not a JSON value")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _with_rules(
    cls: type[BaseModel],
    data: Any,
    handler: ValidatorFunctionWrapHandler,
    rules: Callable[[dict[str, Any], Mapping[str, Any]], list[Problem]],
) -> Any:
    """Validate fields, then run cross-field `rules` over the fields that are valid, and report both at once."""
    errors: list[InitErrorDetails] = []
    try:
        model = handler(data)
        values = dict(model)
        raw: Mapping[str, Any] = data if isinstance(data, Mapping) else values
    except ValidationError as exc:
        if not isinstance(data, Mapping):
            raise
        model, raw = None, data
        carried = exc.errors()
        failed = {e["loc"][0] for e in carried if e["loc"]}
        errors = [_carry(e["type"], e["loc"], e["msg"], e["input"], e.get("ctx")) for e in carried]
        values = {
            name: data[name] if name in data else field.get_default(call_default_factory=True)
            for name, field in cls.model_fields.items()
            if name not in failed and (name in data or not field.is_required())
        }
    errors += [_carry("rule", loc, msg, value) for loc, msg, value in rules(values, raw)]
    if errors:
        raise ValidationError.from_exception_data(cls.__name__, errors)
    return model


def _carry(kind: str, loc: Loc, msg: str, value: object, ctx: Mapping[str, Any] | None = None) -> InitErrorDetails:
    # Re-raised under the same type with the same context, so that `_problem` reads an error the same whether
    # it was carried or not. "{m}" keeps braces in messages (a cname like "web-{x}") from being read as a template.
    context = {**(ctx or {}), "m": msg}
    return InitErrorDetails(type=PydanticCustomError(kind, "{m}", context), loc=loc, input=value)


def _host_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port (got {_show(value)})")
    return value


class RedisSettings(_Frozen):
    url: Annotated[SStr, AfterValidator(_redis_url)] = "redis://127.0.0.1:6379/0"
    key_prefix: Prefix = "ridpool"
    socket_timeout: Positive = 5.0
    # standalone: `url` is the server; cluster: `url` is any node; sentinel: `sentinels` name the primary of
    # `service_name`, and `url` gives only the scheme, credentials and database.
    mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    sentinels: tuple[Annotated[SStr, AfterValidator(_host_port)], ...] = ()
    service_name: Annotated[SStr, _check(bool, "must not be empty")] | None = None
    tls_ca_file: Annotated[SStr, _check(lambda p: Path(p).is_file(), "must name a readable CA file")] | None = None
    # Eviction would lose the shared budget, the queues and the metadata: refused unless explicitly allowed.
    allow_eviction: Annotated[bool, Strict()] = False

    @model_validator(mode="wrap")
    @classmethod
    def _rules(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _with_rules(cls, data, handler, _redis_rules)

    def target(self) -> RedisTarget:
        """How the clients reach this Redis (`ridpool.connect`, through the starters' settings)."""
        return RedisTarget(
            url=self.url,
            key_prefix=self.key_prefix,
            mode=self.mode,
            sentinels=self.sentinels,
            service_name=self.service_name,
            tls_ca_file=self.tls_ca_file,
            socket_timeout=self.socket_timeout,
        )


def _redis_rules(v: dict[str, Any], _raw: Mapping[str, Any]) -> list[Problem]:
    mode = v.get("mode")
    problems: list[Problem] = []
    if mode == "sentinel":
        if "sentinels" in v and not v["sentinels"]:
            problems.append((("sentinels",), 'sentinel mode needs sentinels = ["host:port", ...]', None))
        if "service_name" in v and not v["service_name"]:
            problems.append((("service_name",), "sentinel mode needs the service_name the sentinels monitor", None))
    elif mode is not None:
        for field in ("sentinels", "service_name"):
            if v.get(field):
                problems.append(((field,), f'is only for mode = "sentinel" (mode is "{mode}")', None))
    if isinstance(v.get("url"), str) and v.get("tls_ca_file") and not v["url"].startswith("rediss://"):
        problems.append((("tls_ca_file",), "needs a rediss:// url (TLS)", None))
    return problems


class AgoraSettings(_Frozen):
    base_url: BaseUrls
    rate_limit: Positive = 8.0  # acquires per second for all replicas together
    timeout: Annotated[SFloat, _check(lambda t: 0 < t <= 60, "must be greater than 0 and at most 60")] = 10.0
    # Acquires in flight per replica: a bound on concurrency (and connections), not the rate, which the budget sets.
    # None: derived from the rate (`in_flight`), so that a raised quota is not capped by a fixed number.
    max_in_flight: AtLeastOne | None = None
    account: Name = "default"
    # Seconds by which the network (or a busy host) may bunch requests on their way to Agora; every budget window
    # is this much longer than a second, so the sustained rate is floor(rate_limit) / (1 + jitter).
    jitter: Annotated[SFloat, _check(lambda j: 0 <= j <= 0.5, "must be from 0 to 0.5 seconds")] = 0.05
    # Seconds a refill waits at most behind starters: starters' requests go first, and while they wait the refills of
    # all replicas together still get one grant this often (a floor that keeps pools alive when a starter runs away).
    refill_max_wait: Annotated[
        SFloat, _check(lambda w: 0 < w <= MAX_WAIT, f"must be greater than 0 and at most {MAX_WAIT:g} seconds")
    ] = REFILL_MAX_WAIT

    @property
    def in_flight(self) -> int:
        """One replica's concurrent acquires: configured, or enough for a second of the budget (32 to 256)."""
        return self.max_in_flight or min(MAX_DERIVED_IN_FLIGHT, max(DEFAULT_IN_FLIGHT, math.ceil(self.rate_limit)))


class MetricsSettings(_Frozen):
    """`[metrics]`: Prometheus text on /metrics and the health probe on /healthz; off when the table is absent."""

    port: Annotated[SInt, _check(lambda p: 0 < p < 65536, "must be 1 to 65535")]
    address: Annotated[SStr, _check(bool, "must not be empty")] = "127.0.0.1"
    # Seconds between two reads of every pool's state for /metrics: scrapes in between see the last one. Reading
    # costs a few calls per pool (a pool of many channels: one more per 1,000), so no more often than scraped.
    refresh: Annotated[SFloat, _check(lambda s: 1 <= s <= 3600, "must be from 1 to 3600 seconds")] = 15.0


class LogSettings(_Frozen):
    """`[logs]`: what the daemon logs besides its events."""

    # Seconds between two `pool.summary` events per pool (ready, target, in flight, waste); 0 turns them off.
    summary_interval: Annotated[SFloat, _check(lambda s: s >= 0, "must be 0 (off) or more")] = 60.0


def _cron_ok(cron: str) -> str:
    try:
        warmups.trigger(cron)
    except ValueError as exc:
        raise ValueError(f"{exc} (got {_show(cron)})") from None
    return cron


def _zone_ok(zone: str) -> str:
    try:
        warmups.trigger("0 0 * * *", zone)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return zone


class WarmupConfig(_Frozen):
    """A burst the pool is told about: `size` entries beyond the standing size ready (per channel) at each
    instant of `cron` (in `timezone`), for starts until `duration` seconds later."""

    cron: Annotated[SStr, AfterValidator(_cron_ok)]
    timezone: Annotated[SStr, AfterValidator(_zone_ok)] = "UTC"
    size: AtLeastOne
    duration: Annotated[SFloat, _check(lambda d: 0 < d <= 86400, "must be greater than 0 and at most 86400")] = 300.0


class PoolConfig(_Frozen):
    name: Name
    appid: Annotated[SStr, _check(_HEX32.fullmatch, "must be 32 hexadecimal characters")]
    cname: SStr | None = None
    cnames: Cnames | None = None
    uid: Uid | None = None
    uid_range: UidRange | None = None
    scene: Annotated[SInt, _check(lambda s: s in (0, 1, 2), "must be 0, 1 (web page recording) or 2")] = 0
    region: Literal["CN", "AP", "EU", "NA"] | None = None
    resource_expired_hour: Annotated[SInt, _check(lambda h: 1 <= h <= 720, "must be 1 to 720")] | None = None
    size: Annotated[SInt, _check(lambda n: n >= 0, "must be 0 or more")] = 0
    # Seconds an entry is offered, counted from sending its acquire; Agora's IDs live five minutes.
    max_age: Annotated[SFloat, _check(lambda a: 0 < a < 300, "must be greater than 0 and below 300")] = 270.0
    # Across replicas. None: derived from the budget and Agora's observed latency (planner.in_flight_cap).
    max_in_flight: AtLeastOne | None = None
    warmups: tuple[WarmupConfig, ...] = ()
    # Learn demand from history: true raises the target ahead of it; "forecast" only shows what it would add
    # (`ridpool plan`, status, ridpool_pool_forecast), so that an operator can judge it before letting it act.
    auto_size: Annotated[Literal[False, True, "forecast"], BeforeValidator(_auto_size)] = False
    max_size: Annotated[SInt, _check(lambda n: n >= 0, "must be 0 or more")] | None = None
    start_parameter: Annotated[dict[str, Any], AfterValidator(_json_only)] | None = None
    exclude_resource_ids: tuple[Annotated[SStr, _check(bool, "must not be empty")], ...] | None = None
    region_affinity: Annotated[SInt, _check(lambda r: 0 <= r <= 4, "must be 0 to 4")] | None = None
    # Freshness from evidence (daemon/freshness.py): offer younger entries when starters' reports show older ones
    # failing at start more often. max_age stays the ceiling, min_max_age the floor; max_start_failure is the
    # start failure rate by age that is too high (per pool: pools of other App IDs or regions may differ).
    auto_max_age: Annotated[bool, Strict()] = False
    min_max_age: Annotated[SFloat, _check(lambda a: 2 <= a < 300, "must be from 2 to below 300 seconds")] = 20.0
    max_start_failure: Annotated[
        SFloat, _check(lambda p: 0 < p < 1, "must be greater than 0 and below 1 (a share of starts)")
    ] = 0.05
    # A pool of channels announced at run time (`ridpool announce`) instead of listed here.
    announced: Annotated[bool, Strict()] = False
    # Seconds after an announcement's instant during which entries about to expire unpopped are replaced.
    announce_grace: Annotated[SFloat, _check(lambda g: 0 <= g <= 3600, "must be from 0 to 3600 seconds")] = 300.0

    @model_validator(mode="wrap")
    @classmethod
    def _rules(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _with_rules(cls, data, handler, _pool_rules)

    @property
    def max_age_ms(self) -> int:
        return round(self.max_age * 1000)

    @property
    def min_max_age_ms(self) -> int:
        return round(self.min_max_age * 1000)

    @property
    def learns(self) -> bool:
        """Learned demand is computed (auto_size true or "forecast")."""
        return self.auto_size is not False and self.max_size is not None

    @property
    def acts_on_learned(self) -> bool:
        """Learned demand raises the target (auto_size true); "forecast" only shows it."""
        return self.auto_size is True and self.max_size is not None

    @property
    def is_template(self) -> bool:
        return self.scene == 1 and self.cname is not None and bool(channels.PLACEHOLDER.search(self.cname))

    @property
    def slots(self) -> tuple[str, ...]:
        """The channels the pool keeps `size` entries ready for; "" is the one slot of a template."""
        if self.announced:
            return ()  # the announced channels, known at run time
        if self.cnames is not None:
            return self.cnames
        return ("",) if self.is_template else (str(self.cname),)

    def expand_cname(self) -> str:
        """The literal cname, or a fresh label from the template."""
        if self.cname is None:
            raise ValueError(f"pool {self.name!r} lists several cnames: pick one of its slots")
        if not self.is_template:
            return self.cname
        fresh = {"uuid": lambda: uuid.uuid4().hex, "n": lambda: str(secrets.randbelow(10**10))}
        return channels.PLACEHOLDER.sub(lambda m: fresh[m.group(1)](), self.cname)

    def client_request(self) -> dict[str, object]:
        """Agora's `clientRequest`, holding only what is set (scene only when not 0)."""
        fields: dict[str, object] = {
            "region": self.region,
            "resourceExpiredHour": self.resource_expired_hour,
            "scene": self.scene or None,
            "startParameter": copy.deepcopy(self.start_parameter),
            "excludeResourceIds": None if self.exclude_resource_ids is None else list(self.exclude_resource_ids),
            "regionAffinity": self.region_affinity,
        }
        return {key: value for key, value in fields.items() if value is not None}


def _exactly_one(v: dict[str, Any], first: str, second: str) -> list[Problem]:
    if first not in v or second not in v:
        return []  # one of them is already reported as invalid
    given = (v[first] is not None) + (v[second] is not None)
    if given == 1:
        return []
    return [((first,), f"give exactly one of {first} or {second} ({'both' if given else 'neither'} given)", None)]


def _cname_problems(loc: Loc, name: str, scene: int, template_allowed: bool) -> list[Problem]:
    why = channels.problem(name, scene, template_allowed=template_allowed)
    return [] if why is None else [(loc, f"{why} (got {_show(name)})", name)]


def _pool_rules(v: dict[str, Any], _raw: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem]
    if v.get("announced") is True:
        why = "an announced pool takes its channels from announcements; remove it"
        problems = [((name,), why, v[name]) for name in ("cname", "cnames") if v.get(name) is not None]
    else:
        problems = _exactly_one(v, "cname", "cnames")
    problems += _exactly_one(v, "uid", "uid_range")
    scene = v.get("scene")
    if isinstance(scene, int):
        if isinstance(v.get("cname"), str):
            problems += _cname_problems(("cname",), v["cname"], scene, template_allowed=True)
        for i, name in enumerate(v.get("cnames") or ()):
            problems += _cname_problems(("cnames", i), name, scene, template_allowed=False)
    if v.get("uid_range") is not None and all(k in v for k in ("size", "max_in_flight", "cnames")):
        lo, hi = v["uid_range"]
        n_channels = len(v["cnames"] or ())
        in_flight = v["max_in_flight"] or AUTO_IN_FLIGHT_UIDS
        most = max(v["size"] + sum(w.size for w in v.get("warmups") or ()), v.get("max_size") or 0)
        live = most * max(n_channels, 1) + in_flight
        if hi - lo + 1 < live:
            per = f"size {most} x {n_channels} cnames" if n_channels else f"size {most}"
            why = f"holds {hi - lo + 1} uids but the pool can have {live} live entries ({per} + max_in_flight"
            problems.append((("uid_range",), f"{why} {in_flight}) (got {_show([lo, hi])})", [lo, hi]))
    if v.get("auto_size") and v.get("max_size") is None and "max_size" in v:
        why = f"required with auto_size = {_show(v['auto_size'])} (the most entries per channel)"
        problems.append((("max_size",), why, None))
    floor, ceiling = v.get("min_max_age"), v.get("max_age")
    if v.get("auto_max_age") is True and isinstance(floor, float) and isinstance(ceiling, float) and floor >= ceiling:
        why = f"must be below max_age {_show(ceiling)} (the ceiling auto_max_age never exceeds)"
        problems.append((("min_max_age",), f"{why} (got {_show(floor)})", floor))
    if v.get("max_size") is not None and isinstance(v.get("size"), int) and v["max_size"] < v["size"]:
        problems.append((("max_size",), f"must be at least size {v['size']} (got {v['max_size']})", v["max_size"]))
    return problems


class Config(_Frozen):
    redis: RedisSettings = Field(default_factory=RedisSettings)
    agora: AgoraSettings
    pools: Annotated[tuple[PoolConfig, ...], _check(len, "at least one [[pools]] table is required", show=False)] = (
        Field(default=(), validate_default=True)
    )
    metrics: MetricsSettings | None = None
    logs: LogSettings = Field(default_factory=LogSettings)
    warnings: tuple[str, ...] = ()  # filled by the loader, never read from the file

    @model_validator(mode="wrap")
    @classmethod
    def _rules(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _with_rules(cls, data, handler, _config_rules)

    @property
    def account(self) -> Account:
        """The shared budget this config draws from (what starters' `take` and `start_slot` use too)."""
        return Account(self.agora.rate_limit, self.agora.account, self.agora.jitter)

    @property
    def sustained_rate(self) -> float:
        """Acquires per second the account's budget sustains (see budget.window_for)."""
        return self.account.window.sustained

    @property
    def channels(self) -> dict[str, int]:
        """How many channels a pool-wide demand asks entries for, per pool: its named channels, else one queue."""
        return {p.name: max(1, len(p.slots)) for p in self.pools}

    def settings(self) -> Settings:
        """What a starter's client needs of this config (`PoolClient.from_config` takes a Config too)."""
        pools = {p.name: PoolInfo(p.name, p.announced, p.scene) for p in self.pools}
        return Settings(self.redis.target(), self.account, pools)


def _config_rules(v: dict[str, Any], raw: Mapping[str, Any]) -> list[Problem]:
    problems = _unique_pool_names(v, raw)
    agora = v.get("agora")
    if isinstance(agora, Mapping):  # valid, but left raw because another field failed
        agora = AgoraSettings.model_validate(agora)
    if isinstance(agora, AgoraSettings) and isinstance(raw.get("pools"), list | tuple):
        tables = [p for p in raw["pools"] if isinstance(p, Mapping)]
        problems += _warmup_problems(agora, tables)
        problems += _size_problems(agora, tables)
    return problems


def _size_problems(agora: AgoraSettings, pools: list[Mapping[str, Any]]) -> list[Problem]:
    """What no daemon can serve, whatever its timing: more channels in a pool than MAX_CHANNELS, and standing
    sizes that together need more acquires per second (each entry renewed every max_age) than the budget gives."""
    problems: list[Problem] = []
    for i, p in enumerate(pools):
        cnames = p.get("cnames")
        if isinstance(cnames, list) and len(cnames) > MAX_CHANNELS:
            why = f"names {len(cnames)} channels; a pool may name at most {MAX_CHANNELS} (split it into several)"
            problems.append((("pools", i, "cnames"), why, None))
    sustained = window_for(agora.rate_limit, agora.jitter).sustained
    need = 0.0
    for p in pools:
        channels = len(p["cnames"]) if isinstance(p.get("cnames"), list) and p["cnames"] else 1
        need += channels * max(0.0, _number(p, "size", 0)) / _judged_max_age(p)
    if need > sustained * planner.HEADROOM:
        why = (
            f"the standing sizes need {need:.1f} acquires/s (every entry is renewed every max_age), more than "
            f"{sustained * planner.HEADROOM:.2f}/s the budget plans with ({sustained:.2f}/s sustained x "
            f"{planner.HEADROOM}): lower size or the number of channels, raise max_age, or rate_limit"
        )
        problems.append((("pools",), why, None))
    return problems


def _judged_max_age(p: Mapping[str, Any]) -> float:
    """The max_age (s) a raw pool table is judged with: with auto_max_age, min_max_age (the effective value may
    fall that low). A wrong value is reported as such elsewhere; its default stands in here."""
    max_age = _number(p, "max_age", 270.0)
    max_age = max_age if 0 < max_age < 300 else 270.0
    floor = _number(p, "min_max_age", 20.0)
    floor = floor if 2 <= floor < 300 else 20.0
    return freshness.feasibility_max_age(max_age, auto=p.get("auto_max_age") is True, floor=floor)


def _number(table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _warmup_problems(agora: AgoraSettings, pools: list[Mapping[str, Any]]) -> list[Problem]:
    """Warm-ups no schedule can meet, each alone: more entries than the budget acquires within max_age.

    Read from the raw tables, so that a size is judged even beside other problems of its pool (with the
    defaults standing in for the fields that are wrong)."""
    sustained = window_for(agora.rate_limit, agora.jitter).sustained
    shapes = []
    for p in pools:
        channels = len(p["cnames"]) if isinstance(p.get("cnames"), list) and p["cnames"] else 1
        shapes.append((channels, max(0.0, _number(p, "size", 0)), round(_judged_max_age(p) * 1000)))
    standing = sum(channels * size * 1000 / max(1, age) for channels, size, age in shapes)
    rate = max(0.0, sustained * planner.HEADROOM - standing)
    problems: list[Problem] = []
    for i, (p, (channels, size_each, age)) in enumerate(zip(pools, shapes, strict=True)):
        # The start phase: the burst's starters go at the sustained rate, after the pool's standing entries.
        ahead_ms = channels * size_each * 1000 / sustained
        largest = planner.largest_feasible(rate, age, ahead_ms=ahead_ms) // channels
        tables = p.get("warmups")
        for j, w in enumerate(tables if isinstance(tables, list) else []):
            size = w.get("size") if isinstance(w, Mapping) else None
            if isinstance(size, int) and not isinstance(size, bool) and size > largest:
                per = f" per channel x {channels} channels" if channels > 1 else ""
                why = (
                    f"{size}{per} cannot be served from the pool: the budget plans warm-ups at {rate:.2f}/s "
                    f"({sustained:.2f}/s sustained x {planner.HEADROOM} less standing sizes) and its starters start "
                    f"at {sustained:.2f}/s from the instant, in order, after the {round(channels * size_each)} "
                    f"standing entries ({ahead_ms / 1000:.1f} s); the first entry acquired is started first, so every "
                    f"entry is within max_age {_show(age / 1000)} s at its turn only up to {largest * channels} "
                    f"({(planner.LEAD_MS + planner.MARGIN_MS + planner.LOOK_MS) / 1000:g} s lead, margin and "
                    f"look-ahead); the largest feasible size is {largest}"
                )
                problems.append((("pools", i, "warmups", j, "size"), why, size))
    return problems


def _unique_pool_names(_v: dict[str, Any], raw: Mapping[str, Any]) -> list[Problem]:
    # Read from the raw tables, so a duplicate is reported even beside a pool with other problems.
    pools = raw.get("pools")
    names = [
        p.get("name") if isinstance(p, Mapping) else getattr(p, "name", None)
        for p in (pools if isinstance(pools, list | tuple) else ())
    ]
    return [
        (("pools", i, "name"), f"duplicate pool name {_show(name)} (also pools[{names.index(name)}])", name)
        for i, name in enumerate(names)
        if isinstance(name, str) and names.index(name) < i
    ]


class Credentials(_Frozen):
    """One Agora account's customer ID and secret; the secret's repr and str are redacted."""

    customer_id: str
    customer_secret: SecretStr

    def basic_auth(self) -> tuple[str, str]:
        return self.customer_id, self.customer_secret.get_secret_value()


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
}


def _reason(error: ErrorDetails) -> str:
    """The operator's words for one error, from its type and context: never from pydantic's English message."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind == "value_error":  # raised by our validators, in our words
        return str(ctx["error"])
    if kind == "rule":  # our cross-field rules
        return str(ctx["m"])
    if kind == "literal_error":
        return f"must be {ctx['expected']}"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items, not {ctx['actual_length']}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} items, not {ctx['actual_length']}"
    return f"is not valid ({kind})"


def _problem(error: ErrorDetails) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    kind, value = error["type"], error["input"]
    message = _reason(error)
    # Our own rules already name the value where it helps (and never name a URL that may hold a password).
    if kind not in ("value_error", "rule", "missing", "extra_forbidden") and isinstance(value, str | int | float):
        message += f" (got {_show(value)})"
    return f"{path or 'config'}: {message}"


def _warnings(config: Config) -> tuple[str, ...]:
    found = []
    if config.agora.rate_limit > AGORA_DEFAULT_RATE:
        found.append(
            f"agora.rate_limit: {_show(config.agora.rate_limit)} is above Agora's default 10/s quota; "
            "make sure Agora raised it for this account"
        )
    for i, pool in enumerate(config.pools):
        unused = sorted({"min_max_age", "max_start_failure"} & pool.model_fields_set) if not pool.auto_max_age else []
        if unused:
            found.append(f"pools[{i}]: {' and '.join(unused)} only take effect with auto_max_age = true")
        field, top = ("uid", int(pool.uid)) if pool.uid else ("uid_range", pool.uid_range[1] if pool.uid_range else 0)
        if top > UID_WARN_ABOVE:
            found.append(
                f"pools[{i}].{field}: {top} is above 2^31-1; Agora has been seen to reject such uids with code 2"
            )
    return tuple(found) + overlap_warnings(config, datetime.now(UTC))


OVERLAP_HORIZON = timedelta(days=8)  # a week of instants, and the day a weekly schedule wraps into


def overlap_warnings(config: Config, now: datetime) -> tuple[str, ...]:
    """Warm-ups that fit alone but not together in the next week: the schedule must start acquiring for them
    before their entries could live until the instant. One warning per warm-up, at its first such instant."""
    max_age = {p.name: freshness.feasibility_max_age_ms(p) for p in config.pools}
    standing = [planner.Demand(p.name, None, p.size, 0, None, "size") for p in config.pools if p.slots]
    rate = planner.available_rate(config.sustained_rate, standing, max_age, config.channels)
    demands = []
    tables: dict[str, WarmupConfig] = {}
    for i, pool in enumerate(config.pools):
        for j, w in enumerate(pool.warmups if pool.slots else ()):
            tables[f"pools[{i}].warmups[{j}]"] = w
            spec = warmups.Warmup(pool.name, j, w.cron, w.timezone, w.size, w.duration)
            for at in spec.instants(now, now + OVERLAP_HORIZON, limit=2000):
                at_ms = warmups.to_ms(at)
                until = at_ms + round(w.duration * 1000)
                demands.append(planner.Demand(pool.name, None, w.size, at_ms, until, f"pools[{i}].warmups[{j}]"))
    found: dict[str, str] = {}
    spans = planner.timed_spans(
        [*standing, *demands],
        now_ms=warmups.to_ms(now),
        rate=rate,
        max_age_ms=max_age,
        channels=config.channels,
        start_rate=config.sustained_rate,
    )
    for d, span in planner.shortfalls(spans):
        if d.source in found:
            continue
        w = tables[d.source]
        early = (span.earliest_ms - span.needed_ms) / 1000
        found[d.source] = (
            f"{d.source} ({w.cron}, {w.timezone}) at {warmups.local(d.at_ms, w.timezone).isoformat()}: "
            "overlapping warm-ups "
            f"need acquiring to start {(d.at_ms - span.needed_ms) / 1000:.0f} s before it, but entries acquired "
            f"more than {(d.at_ms - span.earliest_ms) / 1000:.0f} s before die first: about "
            f"{math.ceil(early * rate)} entries short at {rate:.2f}/s"
        )
    return tuple(found.values())


def parse_config(data: Mapping[str, object], *, source: str = "<config>") -> Config:
    """Validate parsed TOML; raises ConfigError listing every problem, or returns a Config with its warnings."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"{source}: must be a table of settings (got {type(data).__name__})"])
    problems = ["warnings: unknown field"] if "warnings" in data else []
    try:
        config = Config.model_validate({key: value for key, value in data.items() if key != "warnings"})
    except ValidationError as exc:
        problems += [_problem(error) for error in exc.errors()]
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return config.model_copy(update={"warnings": _warnings(config)})


def load_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and validate a TOML file; raises ConfigError naming the file for unreadable or malformed TOML.

    RIDPOOL_REDIS_URL and RIDPOOL_REDIS_PASSWORD take precedence over the file's `[redis] url` (see
    `ridpool.settings`), for the daemon as for every other command."""
    data = settings.load_toml(path)
    redis_table = data.get("redis")
    if isinstance(redis_table, dict) and not isinstance(redis_table.get("url", ""), str):
        return parse_config(data, source=os.fspath(path))  # reported as the file's own mistake
    url, _ = settings.redis_url(redis_table.get("url") if isinstance(redis_table, dict) else None, environ=environ)
    if url != (redis_table or {}).get("url", settings.DEFAULT_URL):
        data["redis"] = {**(redis_table if isinstance(redis_table, dict) else {}), "url": url}
    return parse_config(data, source=os.fspath(path))


MIN_SECRET = 16


def load_credentials(environ: Mapping[str, str] = os.environ) -> Credentials:
    """The Agora account from AGORA_CUSTOMER_ID / AGORA_CUSTOMER_SECRET; no message ever holds their values."""
    problems = []
    for var, what in (("AGORA_CUSTOMER_ID", "customer ID"), ("AGORA_CUSTOMER_SECRET", "customer secret")):
        value = environ.get(var, "")
        if not value:
            problems.append(f"{var}: not set or empty; export the Agora account's {what} (Agora console, RESTful API)")
        elif value != value.strip():
            problems.append(f"{var}: has leading or trailing whitespace; remove it")
        elif var == "AGORA_CUSTOMER_SECRET" and len(value) < MIN_SECRET:
            # Agora's secrets are 32 characters. A short one is a mistake, and it would also be scrubbed out of
            # ordinary words in every log line.
            problems.append(f"{var}: shorter than {MIN_SECRET} characters; Agora's customer secrets are 32")
    if ":" in environ.get("AGORA_CUSTOMER_ID", ""):
        problems.append("AGORA_CUSTOMER_ID: must not contain ':' (it is the user name of HTTP Basic auth)")
    if problems:
        raise ConfigError(problems)
    return Credentials(
        customer_id=environ["AGORA_CUSTOMER_ID"], customer_secret=SecretStr(environ["AGORA_CUSTOMER_SECRET"])
    )
