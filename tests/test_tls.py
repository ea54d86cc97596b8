"""TLS (rediss:// with a CA file) and a user/password, against a real TLS redis-server and a throwaway CA."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ridpool import PoolClient
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CUSTOMER_ID, SECRET, eventually, make_config, running, web_pool
from tests.servers import RedisProc, processes
from tests.test_cli import ridpool

pytestmark = pytest.mark.integration
USER, PASSWORD = "ridpool", "s3cret-for-tls-test"


def make_ca(where: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1, valid for a day, made with openssl; returns the CA file."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=ridpool-test-ca")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "1", "-extfile", "san.ext",
    )  # fmt: skip
    return where / "ca.crt"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProc, Path]]:
    certs = tmp_path_factory.mktemp("certs")
    ca = make_ca(certs)
    proc = RedisProc(
        "--port", "0", "--tls-port", "{port}",  # TLS only, on the process's own port
        "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file", str(certs / "server.key"),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
        "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all", "--user", "default", "off",
    )  # fmt: skip
    with processes(proc):
        yield proc, ca


def url(proc: RedisProc, password: str = PASSWORD) -> str:
    return f"rediss://{USER}:{password}@127.0.0.1:{proc.port}/0"


async def test_daemon_client_and_cli_over_tls_with_a_user(tls: tuple[RedisProc, Path], tmp_path: Path) -> None:
    """rediss:// + CA file + user/password: the daemon fills, the client pops, the CLI pops; wrong password: 6."""
    proc, ca = tls
    sim = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET).start()
    try:
        base = make_config(url(proc), sim.url, web_pool(3))
        config = base.model_copy(update={"redis": base.redis.model_copy(update={"tls_ca_file": str(ca)})})
        async with running(config):
            with PoolClient.from_url(url(proc), prefix=PREFIX, ssl_ca_certs=str(ca)) as client:
                await eventually(lambda: client.stats("web").size == 3, 20, "web full over TLS")
                assert client.pop("web").resource_id
    finally:
        sim.stop()
    for name, password in (("good", PASSWORD), ("bad", "wrong-password")):
        (tmp_path / f"{name}.toml").write_text(
            f'[redis]\nurl = "{url(proc, password)}"\nkey_prefix = "{PREFIX}"\ntls_ca_file = "{ca}"\n'
            f'[agora]\nbase_url = "http://127.0.0.1:1"\n'
            f'[[pools]]\nname = "web"\nappid = "{APPID}"\ncname = "web-{{uuid}}"\nscene = 1\nuid = "1"\n'
        )
    done = ridpool("pop", "web", "-c", str(tmp_path / "good.toml"))
    assert done.returncode == 0, done.stderr
    done = ridpool("pop", "web", "-c", str(tmp_path / "bad.toml"))
    assert done.returncode == 6 and PASSWORD not in done.stderr and "wrong-password" not in done.stderr, done.stderr


def test_without_the_ca_the_server_is_not_trusted(tls: tuple[RedisProc, Path]) -> None:
    """No CA file: the certificate is refused and the error says Redis is unavailable (exit 5), naming TLS."""
    proc, _ = tls
    done = ridpool("pop", "web", "--redis-url", url(proc), "--prefix", PREFIX)
    assert done.returncode == 5 and "certificate" in done.stderr.lower(), done.stderr
