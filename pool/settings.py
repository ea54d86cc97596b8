"""What a starter reads of the daemon's config file: where Redis is, the key prefix, the account's budget.

The daemon validates the whole file (`ridpool check-config`); a starter needs only the `[redis]` table, the
budget fields of `[agora]` (`rate_limit`, `jitter`, `account`) and which pools exist, and reads just those here,
with the standard library, so that `PoolClient.from_config` and `ridpool pop -c FILE` work on the base install.

Redis settings may also come from the environment, so that no file needs to hold a password:

- `RIDPOOL_REDIS_URL` replaces `[redis] url`;
- `RIDPOOL_REDIS_PASSWORD` replaces the password of the URL in use (the file's, or `RIDPOOL_REDIS_URL`).

A URL given on the command line (`--redis-url`) wins over both: flags, then the environment, then the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

from ridpool.budget import NETWORK_JITTER, Account
from ridpool.connect import MODES, Mode, aconnect, connect
from ridpool.errors import ConfigError, InvalidArgument
from ridpool.keys import check_prefix

URL_VARIABLE = "RIDPOOL_REDIS_URL"
PASSWORD_VARIABLE = "RIDPOOL_REDIS_PASSWORD"  # noqa: S105 - the variable's name, not a password
DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "ridpool"
DEFAULT_RATE = 8.0
SCHEMES = ("redis", "rediss", "unix")


def with_password(url: str, password: str) -> str:
    """`url` with its password replaced (its user, if any, kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def redis_url(
    file_url: str | None, *, flag: str | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[str, str]:
    """The Redis URL a command uses, and where it came from (for messages that must not show the URL itself):
    `--redis-url`, else RIDPOOL_REDIS_URL, else the file's `[redis] url`, else the default; RIDPOOL_REDIS_PASSWORD
    then replaces the password of a URL that did not come from the command line."""
    if flag:
        return flag, "--redis-url"
    url, source = environ.get(URL_VARIABLE) or file_url or DEFAULT_URL, URL_VARIABLE
    if not environ.get(URL_VARIABLE):
        source = "[redis] url" if file_url else "the default URL"
    password = environ.get(PASSWORD_VARIABLE)
    if password:
        url = with_password(url, password)
        source += f" with {PASSWORD_VARIABLE}"
    return url, source


def url_problem(url: str) -> str | None:
    """Why redis-py cannot use `url`, in words that never repeat the URL (it may hold a password); None if it can."""
    from redis.connection import parse_url

    if urlsplit(url).scheme not in SCHEMES:
        return "must be a Redis URL: redis://, rediss:// or unix://"
    try:
        # What redis-py itself will make of it (port, database, query options), so that a URL accepted here is
        # one the client can use.
        options = parse_url(url)  # type: ignore[no-untyped-call]
        if not 0 < int(options.get("port", 6379)) < 65536:
            raise ValueError("port out of range")
    except (ValueError, TypeError) as exc:
        reason = str(exc).split(":")[0] if "://" not in str(exc) else "malformed"
        return f"is not a usable Redis URL ({reason})"
    return None


def check_url(url: str, source: str) -> str:
    """A URL redis-py can use, else ConfigError naming where it came from."""
    problem = url_problem(url)
    if problem is None:
        return url
    if source == "--redis-url":
        raise InvalidArgument(f"--redis-url {problem} (such as {DEFAULT_URL})")
    raise ConfigError([f"{source}: {problem} (such as {DEFAULT_URL})"])


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """How to reach Redis: the URL (credentials inside) and the mode, as `ridpool.connect` takes them."""

    url: str = field(repr=False)  # may hold a password: never shown
    key_prefix: str = DEFAULT_PREFIX
    mode: Mode = "standalone"
    sentinels: tuple[str, ...] = ()
    service_name: str | None = None
    tls_ca_file: str | None = None
    socket_timeout: float = 5.0

    def client_kwargs(self) -> dict[str, Any]:
        """What `ridpool.connect.connect` / `aconnect` take besides the URL."""
        kwargs: dict[str, Any] = {"mode": self.mode, "socket_timeout": self.socket_timeout}
        if self.mode == "sentinel":
            kwargs.update(sentinels=self.sentinels, service_name=self.service_name)
        if self.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = self.tls_ca_file
        return kwargs

    def connect(self, **kwargs: Any) -> Any:
        return connect(self.url, **{**self.client_kwargs(), **kwargs})

    def aconnect(self, **kwargs: Any) -> Any:
        return aconnect(self.url, **{**self.client_kwargs(), **kwargs})


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """What a starter command checks about a pool before it touches Redis."""

    name: str
    announced: bool = False
    scene: int = 0


@dataclass(frozen=True, slots=True)
class Settings:
    redis: RedisTarget
    account: Account
    pools: Mapping[str, PoolInfo] = field(default_factory=dict)


def _get(table: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str, default: Any) -> Any:
    value = table.get(key, default)
    is_bool = isinstance(value, bool)
    wants_bool = kinds is bool or (isinstance(kinds, tuple) and bool in kinds)
    if value is not default and (not isinstance(value, kinds) or (is_bool and not wants_bool)):
        names = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise ConfigError([f"{where}.{key}: must be {'a ' + names if names != 'bool' else 'true or false'}"])
    return value


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError([f"{key}: must be a table"])
    return value


def parse(
    data: Mapping[str, Any],
    *,
    flag_url: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """The starter's part of a parsed config file (see the module docstring for the environment)."""
    redis_table, agora = _table(data, "redis"), _table(data, "agora")
    url, source = redis_url(_get(redis_table, "url", str, "redis", None), flag=flag_url, environ=environ)
    mode = _get(redis_table, "mode", str, "redis", "standalone")
    if mode not in MODES:
        raise ConfigError([f"redis.mode: must be one of {', '.join(MODES)} (got {mode!r})"])
    prefix = _get(redis_table, "key_prefix", str, "redis", DEFAULT_PREFIX)
    try:
        check_prefix(prefix)
    except ValueError as exc:
        raise ConfigError([f"redis.key_prefix: {exc}"]) from None
    sentinels = _get(redis_table, "sentinels", list, "redis", [])
    target = RedisTarget(
        url=check_url(url, source),
        key_prefix=prefix,
        mode=cast(Mode, mode),
        sentinels=tuple(str(s) for s in sentinels),
        service_name=_get(redis_table, "service_name", str, "redis", None),
        tls_ca_file=_get(redis_table, "tls_ca_file", str, "redis", None),
        socket_timeout=float(_get(redis_table, "socket_timeout", (int, float), "redis", 5.0)),
    )
    rate = _get(agora, "rate_limit", (int, float), "agora", DEFAULT_RATE)
    if not rate > 0:
        raise ConfigError([f"agora.rate_limit: must be greater than 0 (got {rate!r})"])
    account = Account(
        rate_limit=float(rate),
        name=_get(agora, "account", str, "agora", "default"),
        jitter=float(_get(agora, "jitter", (int, float), "agora", NETWORK_JITTER)),
    )
    return Settings(target, account, _pools(data.get("pools", [])))


def _pools(tables: object) -> dict[str, PoolInfo]:
    if not isinstance(tables, Sequence) or isinstance(tables, str):
        raise ConfigError(["pools: must be a list of [[pools]] tables"])
    out = {}
    for i, table in enumerate(tables):
        if not isinstance(table, Mapping):
            raise ConfigError([f"pools[{i}]: must be a table"])
        name = _get(table, "name", str, f"pools[{i}]", None)
        if name is None:
            raise ConfigError([f"pools[{i}].name: required"])
        announced = _get(table, "announced", bool, f"pools[{i}]", False)
        out[name] = PoolInfo(name, announced, _get(table, "scene", int, f"pools[{i}]", 0))
    return out


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML file's tables; ConfigError naming the file for a missing, unreadable or malformed one."""
    name = os.fspath(path)
    try:
        text = Path(name).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{name}: file not found"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: not UTF-8 text (bad byte at offset {exc.start})"]) from None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read ({exc.strerror})"]) from None
    # A byte order mark is how some editors start UTF-8 text; TOML itself does not allow one.
    text = text.removeprefix("\ufeff")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r" \(at line (\d+), column (\d+)\)$", str(exc))
        if where:
            reason = str(exc)[: where.start()]
            raise ConfigError([f"{name}: invalid TOML at line {where[1]}, column {where[2]}: {reason}"]) from None
        raise ConfigError([f"{name}: invalid TOML: {exc}"]) from None


def read(
    path: str | os.PathLike[str], *, flag_url: str | None = None, environ: Mapping[str, str] = os.environ
) -> Settings:
    """The starter's settings from the daemon's config file."""
    return parse(load_toml(path), flag_url=flag_url, environ=environ)
