"""The Agora Cloud Recording simulator is as strict as the real service, over real HTTP on loopback."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ridpool import cli, testing
from ridpool.testing import Faults, Simulator, serve_forever

CUSTOMER_ID = "c0ffee-customer"
SECRET = "s3cr3t-do-not-leak-7f1e"
APPID = "0123456789abcdef0123456789abcdef"
ACQUIRE = f"/v1/apps/{APPID}/cloud_recording/acquire"
CNAME, UID = "room-1", "527841"
LATIN1 = "application/json;charset=latin-1"
HEX32 = re.compile(r"[0-9a-f]{32}")


class FakeClock:
    """A clock that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_sim(clock: FakeClock) -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def make(**kwargs: Any) -> Simulator:
        options: dict[str, Any] = {"clock": clock, "seed": 7, **kwargs}
        sim = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, **options).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Simulator]) -> Simulator:
    """A simulator whose rate limit stays out of the way of tests about something else."""
    return make_sim(rate_limit=10_000)


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET), timeout=5.0) as c:
        yield c


def body(cname: object = CNAME, uid: object = UID, **client_request: object) -> dict[str, object]:
    return {"cname": cname, "uid": uid, "clientRequest": client_request}


def acquire(client: httpx.Client, **kwargs: Any) -> httpx.Response:
    return client.post(ACQUIRE, json=body(**kwargs))


def acquired_id(client: httpx.Client, **kwargs: Any) -> str:
    response = acquire(client, **kwargs)
    assert response.status_code == 200, response.text
    rid = response.json()["resourceId"]
    assert isinstance(rid, str)
    return rid


def start(client: httpx.Client, rid: str, *, appid: str = APPID, cname: str = CNAME, uid: str = UID) -> httpx.Response:
    path = f"/v1/apps/{appid}/cloud_recording/resourceid/{rid}/mode/mix/start"
    return client.post(path, json={"cname": cname, "uid": uid, "clientRequest": {}})


def raw_exchange(sim: Simulator, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes, read until the server closes, return (head, body)."""
    host, port = sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(request)
        answer = b"".join(iter(lambda: raw.recv(65536), b""))
    head, _, payload = answer.partition(b"\r\n\r\n")
    return head, payload


def has_request_id(response: httpx.Response) -> bool:
    return HEX32.fullmatch(response.headers.get("X-Request-Id", "")) is not None


# success and routing


def test_acquire_answers_cname_uid_and_a_long_url_safe_resource_id(client: httpx.Client, sim: Simulator) -> None:
    """A valid acquire gets 200 with cname, uid, a ~240-char URL-safe resourceId and an X-Request-Id."""
    response = acquire(client, region="NA", resourceExpiredHour=24)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert has_request_id(response)
    data = response.json()
    assert set(data) == {"cname", "uid", "resourceId"}
    assert (data["cname"], data["uid"]) == (CNAME, UID)
    assert re.fullmatch(r"[A-Za-z0-9_-]{200,300}", data["resourceId"])
    assert sim.stats().acquired == 1


def test_every_answer_carries_a_fresh_request_id(client: httpx.Client) -> None:
    """Successes and errors alike carry an X-Request-Id, and no two are equal."""
    responses = [acquire(client), acquire(client, uid="0"), client.get("/nowhere"), client.post(ACQUIRE)]
    ids = [r.headers["X-Request-Id"] for r in responses]
    assert all(has_request_id(r) for r in responses)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ACQUIRE),
        ("PUT", ACQUIRE),
        ("DELETE", ACQUIRE),
        ("POST", f"/v1/apps/{APPID}/cloud_recording/acquire/extra"),
        ("POST", f"/v1/apps/{APPID}/cloud_recording/resourceid/abc/mode/bogus/start"),
        ("POST", "/v2/whatever"),
        ("PROPFIND", ACQUIRE),
    ],
)
def test_unknown_routes_and_methods_get_no_route_matched(sim: Simulator, method: str, path: str) -> None:
    """Unknown paths and wrong methods get 404 "no Route matched", even without credentials."""
    with httpx.Client(base_url=sim.url) as anonymous:
        response = anonymous.request(method, path)
    assert response.status_code == 404
    assert response.json() == {"message": "no Route matched with those values"}
    assert has_request_id(response)


def test_error_answers_leave_a_keep_alive_connection_usable(client: httpx.Client) -> None:
    """A rejected POST's body is drained, so the next request on the same connection is parsed cleanly."""
    for _ in range(3):
        assert client.post(ACQUIRE, json=body(), auth=(CUSTOMER_ID, "wrong")).status_code == 401
        assert client.post("/nowhere", json=body()).status_code == 404
        assert acquire(client).status_code == 200


def test_chunked_request_bodies_are_accepted(client: httpx.Client) -> None:
    """A body sent with Transfer-Encoding: chunked is read like one with a Content-Length."""
    payload = json.dumps(body()).encode()
    chunks = iter([payload[:10], payload[10:]])
    response = client.post(ACQUIRE, content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert acquire(client).status_code == 200  # and the connection stayed in step


def test_unparsable_requests_still_get_json_and_a_request_id(sim: Simulator) -> None:
    """Even a garbage request line is answered with a status line, JSON and an X-Request-Id."""
    head, payload = raw_exchange(sim, b"GARBAGE\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert re.search(rb"\r\nX-Request-Id: [0-9a-f]{32}\r\n", head)
    assert "message" in json.loads(payload)


def test_oversized_bodies_are_refused_unread_and_the_connection_closed(sim: Simulator) -> None:
    """A body announced over 1 MiB is not read: 400 code 2 and Connection: close."""
    credentials = base64.b64encode(f"{CUSTOMER_ID}:{SECRET}".encode())
    request = b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\n" % (ACQUIRE.encode(), credentials)
    request += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % ((1 << 20) + 1)
    head, payload = raw_exchange(sim, request)
    assert head.startswith(b"HTTP/1.1 400")
    assert b"\r\nConnection: close" in head
    assert json.loads(payload)["code"] == 2


# authentication


def test_missing_authorization_is_unauthorized(sim: Simulator) -> None:
    """A request without an Authorization header gets 401 "Unauthorized"."""
    response = httpx.post(sim.url + ACQUIRE, json=body())
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    assert has_request_id(response)


@pytest.mark.parametrize(
    "auth",
    [(CUSTOMER_ID, SECRET + "x"), ("someone-else", SECRET), (CUSTOMER_ID, ""), (SECRET, SECRET)],
    ids=["wrong-secret", "wrong-customer", "empty-secret", "secret-as-id"],
)
def test_wrong_credentials_are_rejected_without_echoing_the_secret(sim: Simulator, auth: tuple[str, str]) -> None:
    """Wrong credentials get 401 "Invalid authentication credentials" and no trace of any secret."""
    response = httpx.post(sim.url + ACQUIRE, json=body(), auth=auth)
    assert response.status_code == 401
    assert response.json() == {"message": "Invalid authentication credentials"}
    everything = response.text + str(response.headers)
    assert SECRET not in everything
    assert auth[1] == "" or auth[1] not in everything
    assert SECRET not in repr(sim)


@pytest.mark.parametrize(
    "authorization", ["Bearer abc", "Basic !!!not-base64!!!", "Basic", "Digest Yzpz", "Basic w6k6w6k="]
)
def test_malformed_authorization_headers_are_invalid_credentials(sim: Simulator, authorization: str) -> None:
    """An Authorization header that is not valid Basic for this customer gets the credentials 401."""
    response = httpx.post(sim.url + ACQUIRE, json=body(), headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.json() == {"message": "Invalid authentication credentials"}


# validation

BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    # (id, request overrides, expected code, text the reason must contain)
    ("cname-bad-chars", {"json": body(cname="room*1")}, 401, "invalid_channel_name"),
    ("cname-non-ascii", {"json": body(cname="salle-é")}, 401, "invalid_channel_name"),
    ("cname-64-bytes", {"json": body(cname="a" * 64)}, 401, "invalid_channel_name"),
    ("cname-empty", {"json": body(cname="")}, 401, "invalid_channel_name"),
    ("cname-missing", {"json": {"uid": UID, "clientRequest": {}}}, 2, "cname"),
    ("cname-number", {"json": body(cname=12)}, 2, "cname"),
    ("web-label-129-bytes", {"json": body(cname="x" * 129, scene=1)}, 2, "cname"),
    ("web-label-empty", {"json": body(cname="", scene=1)}, 2, "cname"),
    ("uid-zero", {"json": body(uid="0")}, 2, "uid"),
    ("uid-2-to-the-32", {"json": body(uid="4294967296")}, 2, "uid"),
    ("uid-letters", {"json": body(uid="abc")}, 2, "uid"),
    ("uid-int", {"json": body(uid=12)}, 2, "uid"),
    ("uid-empty", {"json": body(uid="")}, 2, "uid"),
    ("uid-negative", {"json": body(uid="-5")}, 2, "uid"),
    ("uid-missing", {"json": {"cname": CNAME, "clientRequest": {}}}, 2, "uid"),
    ("region-xx", {"json": body(region="XX")}, 2, "region"),
    ("expired-hour-0", {"json": body(resourceExpiredHour=0)}, 2, "resourceExpiredHour"),
    ("expired-hour-721", {"json": body(resourceExpiredHour=721)}, 2, "resourceExpiredHour"),
    ("expired-hour-string", {"json": body(resourceExpiredHour="24")}, 2, "resourceExpiredHour"),
    ("scene-3", {"json": body(scene=3)}, 2, "scene"),
    ("scene-bool", {"json": body(scene=True)}, 2, "scene"),
    ("region-affinity-5", {"json": body(regionAffinity=5)}, 2, "regionAffinity"),
    ("exclude-not-list", {"json": body(excludeResourceIds="abc")}, 2, "excludeResourceIds"),
    ("exclude-not-strings", {"json": body(excludeResourceIds=[1])}, 2, "excludeResourceIds"),
    ("start-parameter-list", {"json": body(startParameter=[])}, 2, "startParameter"),
    ("client-request-missing", {"json": {"cname": CNAME, "uid": UID}}, 2, "clientRequest"),
    ("client-request-list", {"json": {"cname": CNAME, "uid": UID, "clientRequest": []}}, 2, "clientRequest"),
    ("bad-appid-short", {"url": "/v1/apps/abc123/cloud_recording/acquire", "json": body()}, 400, "invalid_appid"),
    ("bad-appid-not-hex", {"url": ACQUIRE.replace("0123", "zzzz", 1), "json": body()}, 400, "invalid_appid"),
    ("content-type-text", {"content": b"{}", "headers": {"Content-Type": "text/plain"}}, 2, "content type"),
    ("content-type-latin1", {"content": b"{}", "headers": {"Content-Type": LATIN1}}, 2, "content type"),
    ("body-not-json", {"content": b"cname=x", "headers": {"Content-Type": "application/json"}}, 2, "JSON"),
    ("body-a-list", {"json": [body()]}, 2, "object"),
    ("body-empty", {"content": b"", "headers": {"Content-Type": "application/json"}}, 2, "JSON"),
]


@pytest.mark.parametrize(
    ("overrides", "code", "reason"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_invalid_acquire_requests_get_the_documented_400(
    client: httpx.Client, sim: Simulator, overrides: dict[str, Any], code: int, reason: str
) -> None:
    """Each documented parameter rule is enforced with Agora's 400 code and a reason naming the field."""
    response = client.request("POST", **{"url": ACQUIRE, **overrides})
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert reason in response.json()["reason"]
    assert has_request_id(response)
    assert (sim.stats().bad_requests, sim.stats().acquired) == (1, 0)


@pytest.mark.parametrize(
    "request_body",
    [
        body(cname="a" * 63),
        body(cname="aZ09 !#$%&()+-:;<=.>?@[]^_{}|~,"),
        body(cname="é" * 64, scene=1),
        body(cname="web label with / and * in it", scene=1),
        body(uid="1"),
        body(uid="4294967295"),
        body(scene=2, region="CN", resourceExpiredHour=720, regionAffinity=4),
        body(resourceExpiredHour=1, regionAffinity=0, excludeResourceIds=["x"], startParameter={"a": 1}),
    ],
    ids=[
        "cname-63",
        "cname-charset",
        "web-label-128-bytes",
        "web-label-free-text",
        "uid-1",
        "uid-max",
        "upper-bounds",
        "lower-bounds",
    ],
)
def test_boundary_values_are_accepted(client: httpx.Client, request_body: dict[str, object]) -> None:
    """Values right at the documented limits are valid."""
    response = client.post(ACQUIRE, json=request_body)
    assert response.status_code == 200, response.text


def test_content_type_charset_is_optional(client: httpx.Client) -> None:
    """Both "application/json" and "application/json;charset=utf-8" are accepted."""
    for content_type in ("application/json", "application/json; charset=UTF-8"):
        response = client.post(ACQUIRE, content=json.dumps(body()), headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text


# rate limit


def test_eleventh_request_in_one_second_is_rate_limited_until_the_clock_advances(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    """Ten requests in a second pass, the eleventh gets 429, and a full second later requests pass again."""
    sim = make_sim()
    with httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET)) as client:
        assert [acquire(client).status_code for _ in range(10)] == [200] * 10
        limited = acquire(client)
        assert limited.status_code == 429
        assert limited.json() == {"message": "API rate limit exceeded"}
        assert has_request_id(limited)
        clock.advance(0.5)
        assert acquire(client).status_code == 429
        clock.advance(0.5)  # exactly one second after the first ten
        assert acquire(client).status_code == 200
    assert sim.stats().rate_limited == 2


def test_refused_and_invalid_requests_use_up_the_window_too(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    """Every authenticated arrival counts, whether it then failed validation or was itself refused."""
    sim = make_sim()
    with httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET)) as client:
        assert [acquire(client, uid="0").status_code for _ in range(5)] == [400] * 5
        clock.advance(0.5)
        assert [acquire(client).status_code for _ in range(6)] == [200] * 5 + [429]
        clock.advance(0.5)  # the five 400s leave; five 200s and the 429 stay
        assert [acquire(client).status_code for _ in range(5)] == [200] * 4 + [429]


def test_unauthenticated_requests_do_not_count_against_the_rate_limit(make_sim: Callable[..., Simulator]) -> None:
    """Requests that fail auth or match no route never reach the limiter."""
    sim = make_sim()
    with httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET)) as client:
        for _ in range(20):
            assert client.post(ACQUIRE, json=body(), auth=(CUSTOMER_ID, "nope")).status_code == 401
            assert client.post("/nowhere").status_code == 404
        assert [acquire(client).status_code for _ in range(10)] == [200] * 10
    assert sim.stats().rate_limited == 0


def test_rate_limit_is_shared_by_acquire_and_start(make_sim: Callable[..., Simulator]) -> None:
    """Start calls and acquire calls draw on the same 10-per-second budget."""
    sim = make_sim()
    with httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET)) as client:
        rids = [acquired_id(client) for _ in range(5)]
        assert [start(client, rid).status_code for rid in rids] == [200] * 5
        assert acquire(client).status_code == 429
        assert start(client, "whatever").status_code == 429


def test_max_in_window_reports_the_busiest_second(make_sim: Callable[..., Simulator], clock: FakeClock) -> None:
    """max_in_window is the peak number of arrivals the limiter counted in one sliding second."""
    sim = make_sim()
    with httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET)) as client:
        for _ in range(3):
            acquire(client)
        assert sim.stats().max_in_window == 3
        clock.advance(0.6)
        for _ in range(4):
            acquire(client)
        assert sim.stats().max_in_window == 7
        clock.advance(0.6)  # the first three fall out: 4 + 2 = 6 < 7
        for _ in range(2):
            acquire(client)
        assert sim.stats().max_in_window == 7
        for _ in range(6):
            acquire(client)
        assert sim.stats().max_in_window == 12


# ledger: start and check


def test_start_with_the_acquired_triple_succeeds_once_then_reports_reuse(client: httpx.Client, sim: Simulator) -> None:
    """The first start gets 200 with a sid; the second start with the same ID gets 201 code 7."""
    rid = acquired_id(client)
    first = start(client, rid)
    assert first.status_code == 200
    assert {k: v for k, v in first.json().items() if k != "sid"} == {"cname": CNAME, "uid": UID, "resourceId": rid}
    assert HEX32.fullmatch(first.json()["sid"])
    again = start(client, rid)
    assert again.status_code == 201
    assert again.json()["code"] == 7
    assert has_request_id(again)
    assert (sim.stats().started, sim.stats().reused) == (1, 1)


def test_check_accepts_the_right_triple_once_then_says_used(client: httpx.Client, sim: Simulator) -> None:
    """check() passes an issued, fresh ID once and reports "used" from then on, as does start."""
    rid = acquired_id(client)
    assert sim.check(rid, appid=APPID, cname=CNAME, uid=UID) is None
    assert sim.check(rid, appid=APPID, cname=CNAME, uid=UID) == "used"
    assert start(client, rid).status_code == 201


@pytest.mark.parametrize(("field", "value"), [("appid", "f" * 32), ("cname", "room-2"), ("uid", "527842")])
def test_an_id_only_serves_the_triple_it_was_acquired_for(
    client: httpx.Client, sim: Simulator, field: str, value: str
) -> None:
    """Another appid, cname or uid is refused (400 code 432 over HTTP) and does not consume the ID."""
    rid = acquired_id(client)
    wrong = {"appid": APPID, "cname": CNAME, "uid": UID, field: value}
    assert sim.check(rid, **wrong) == f"wrong {field}"
    response = start(client, rid, **wrong)
    assert response.status_code == 400
    assert response.json()["code"] == 432
    assert sim.check(rid, appid=APPID, cname=CNAME, uid=UID) is None


def test_unknown_ids_are_not_found(client: httpx.Client, sim: Simulator) -> None:
    """An ID the simulator never issued is "unknown" to check() and 404 code 404 to start."""
    assert sim.check("made-up", appid=APPID, cname=CNAME, uid=UID) == "unknown"
    response = start(client, "made-up")
    assert response.status_code == 404
    assert response.json() == {"code": 404, "reason": "resource not found"}


def test_ids_expire_validity_seconds_after_issue(client: httpx.Client, sim: Simulator, clock: FakeClock) -> None:
    """An ID is good until just before 300 s after issue, expired from then on (400 code 433 over HTTP)."""
    early, late, via_http = (acquired_id(client) for _ in range(3))
    clock.advance(299.5)
    assert sim.check(early, appid=APPID, cname=CNAME, uid=UID) is None
    clock.advance(0.5)
    assert sim.check(late, appid=APPID, cname=CNAME, uid=UID) == "expired"
    response = start(client, via_http)
    assert response.status_code == 400
    assert response.json() == {"code": 433, "reason": "resource expired"}


def test_reuse_is_reported_even_after_expiry(client: httpx.Client, sim: Simulator, clock: FakeClock) -> None:
    """A started ID reused later says "used", so reuse never hides behind expiry."""
    rid = acquired_id(client)
    assert sim.check(rid, appid=APPID, cname=CNAME, uid=UID) is None
    clock.advance(400)
    assert sim.check(rid, appid=APPID, cname=CNAME, uid=UID) == "used"


def test_ledger_forgets_records_older_than_twice_validity(
    client: httpx.Client, sim: Simulator, clock: FakeClock
) -> None:
    """Records older than 2x validity are dropped as new IDs are issued, so memory stays bounded."""
    old = acquired_id(client)
    clock.advance(601)
    fresh = acquired_id(client)
    assert sim.check(old, appid=APPID, cname=CNAME, uid=UID) == "unknown"
    assert sim.check(fresh, appid=APPID, cname=CNAME, uid=UID) is None


@pytest.mark.parametrize(
    ("request_body", "headers"),
    [
        ({"cname": CNAME, "clientRequest": {}}, None),
        ({"cname": CNAME, "uid": "0", "clientRequest": {}}, None),
        ({"uid": UID, "clientRequest": {}}, None),
        ({"cname": CNAME, "uid": UID}, None),
        ({"cname": CNAME, "uid": UID, "clientRequest": {}}, {"Content-Type": "text/plain"}),
    ],
    ids=["uid-missing", "uid-zero", "cname-missing", "client-request-missing", "content-type"],
)
def test_invalid_start_requests_get_code_2(
    client: httpx.Client, request_body: dict[str, object], headers: dict[str, str] | None
) -> None:
    """Start validates its body like acquire before looking the ID up."""
    rid = acquired_id(client)
    path = f"/v1/apps/{APPID}/cloud_recording/resourceid/{rid}/mode/individual/start"
    response = client.post(
        path, content=json.dumps(request_body), headers=headers or {"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == 2


# faults


def test_overload_fault_answers_vendor_over_load(client: httpx.Client, sim: Simulator) -> None:
    """p_overload=1 turns every acquire into 400 code 406 vendor_over_load."""
    sim.faults = Faults(p_overload=1.0)
    response = acquire(client)
    assert (response.status_code, response.json()) == (400, {"code": 406, "reason": "vendor_over_load"})
    assert has_request_id(response)
    assert (sim.stats().overloaded, sim.stats().bad_requests, sim.stats().acquired) == (1, 0, 0)


def test_5xx_fault_answers_each_documented_server_error(client: httpx.Client, sim: Simulator) -> None:
    """p_5xx=1 yields only 500 internal_error, 501 no_worker_manager_available and 504 allocate_timeout."""
    sim.faults = Faults(p_5xx=1.0)
    seen = set()
    for _ in range(30):
        response = acquire(client)
        assert response.json()["code"] == response.status_code
        seen.add((response.status_code, response.json()["reason"]))
    assert seen == {(500, "internal_error"), (501, "no_worker_manager_available"), (504, "allocate_timeout")}
    assert (sim.stats().errors_5xx, sim.stats().acquired) == (30, 0)


def malformed_kind(response: httpx.Response) -> str:
    """Classify a 200 that must not be taken for a resourceId; fail if it carries a usable one."""
    try:
        data = response.json()
    except ValueError:
        return "not-json"
    if isinstance(data, list):
        return "list"
    assert isinstance(data, dict)
    if "resourceId" not in data:
        return "missing"
    rid = data["resourceId"]
    assert not (isinstance(rid, str) and rid), "a malformed answer carried a usable resourceId"
    return {"": "empty", None: "null"}.get(rid, type(rid).__name__)


def test_malformed_fault_answers_200s_without_a_usable_resource_id(client: httpx.Client, sim: Simulator) -> None:
    """p_malformed=1 yields every kind of unusable 200: non-JSON, no ID, "", a number, null, a list."""
    sim.faults = Faults(p_malformed=1.0)
    kinds = set()
    for _ in range(60):
        response = acquire(client)
        assert response.status_code == 200
        assert has_request_id(response)
        kinds.add(malformed_kind(response))
    assert kinds == {"not-json", "missing", "empty", "int", "null", "list"}
    assert (sim.stats().malformed, sim.stats().acquired) == (60, 0)


def test_spurious_429_fault_is_counted_apart_from_the_real_limit(client: httpx.Client, sim: Simulator) -> None:
    """p_429=1 answers the rate-limit 429 although the window is far from full."""
    sim.faults = Faults(p_429=1.0)
    response = acquire(client)
    assert (response.status_code, response.json()) == (429, {"message": "API rate limit exceeded"})
    assert (sim.stats().spurious_429, sim.stats().rate_limited) == (1, 0)


def test_timeout_fault_never_answers_and_does_not_delay_stop(sim: Simulator) -> None:
    """p_timeout=1 holds the request past the client's timeout, and stop() does not wait for the hold."""
    sim.faults = Faults(p_timeout=1.0, timeout_hold=0.3)
    with (
        httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET), timeout=0.1) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        acquire(client)
    assert sim.stats().timeouts == 1
    sim.faults.timeout_hold = 30.0
    with (
        httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET), timeout=0.1) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        acquire(client)
    began = time.monotonic()
    sim.stop()
    assert time.monotonic() - began < 0.5


def test_timeout_fault_closes_the_connection_after_the_hold(client: httpx.Client, sim: Simulator) -> None:
    """After timeout_hold the connection is closed without any answer."""
    sim.faults = Faults(p_timeout=1.0, timeout_hold=0.05)
    with pytest.raises(httpx.RemoteProtocolError):
        acquire(client)


def test_faults_only_replace_otherwise_successful_answers(client: httpx.Client, sim: Simulator) -> None:
    """Auth, routing and validation errors are answered as such even when every fault is certain."""
    sim.faults = Faults(p_overload=1.0, p_5xx=1.0, p_malformed=1.0, p_429=1.0, p_timeout=1.0)
    assert acquire(client, uid="0").json()["code"] == 2
    assert client.post(ACQUIRE, json=body(), auth=(CUSTOMER_ID, "x")).status_code == 401
    assert client.post("/nowhere").status_code == 404
    assert acquire(client).json()["code"] == 406  # overload comes first in the order


def test_faults_can_be_changed_while_serving(client: httpx.Client, sim: Simulator) -> None:
    """Faults are read per request, whether replaced wholesale or mutated in place."""
    assert acquire(client).status_code == 200
    sim.faults.p_overload = 1.0
    assert acquire(client).status_code == 400
    sim.faults = Faults()
    assert acquire(client).status_code == 200


def test_latency_is_added_to_every_answer(client: httpx.Client, sim: Simulator) -> None:
    """latency delays successes and errors alike."""
    sim.faults = Faults(latency=0.15, jitter=0.05)
    for path, expected in ((ACQUIRE, 200), ("/nowhere", 404)):
        began = time.monotonic()
        assert client.post(path, json=body()).status_code == expected
        assert time.monotonic() - began >= 0.1


def test_seeded_simulators_inject_the_same_faults(make_sim: Callable[..., Simulator]) -> None:
    """Two simulators with one seed make the same fault choices."""
    outcomes = []
    for _ in range(2):
        sim = make_sim(rate_limit=10_000, seed=42, faults=Faults(p_5xx=0.5, p_overload=0.2))
        with httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET)) as client:
            outcomes.append([acquire(client).status_code for _ in range(20)])
    assert outcomes[0] == outcomes[1]
    assert len(set(outcomes[0])) > 1


# start failures by ID age


@pytest.mark.parametrize(
    ("age", "p", "fails"),
    [
        (59.0, 1.0, False),  # not older than start_fail_after: never fails
        (60.0, 1.0, False),  # exactly as old: "older than" is strict
        (61.0, 1.0, True),
        (200.0, 0.0, False),  # p 0: never
    ],
)
def test_a_start_of_an_id_older_than_start_fail_after_fails_with_code_433(
    client: httpx.Client, sim: Simulator, clock: FakeClock, age: float, p: float, fails: bool
) -> None:
    """Faults(start_fail_after=60, p_start_fail=p): by the simulator's clock since issue, 400 code 433, counted."""
    sim.faults = Faults(start_fail_after=60, p_start_fail=p)
    rid = acquired_id(client)
    clock.advance(age)
    response = start(client, rid)
    if fails:
        assert (response.status_code, response.json()) == (400, {"code": 433, "reason": "resource expired"})
        assert has_request_id(response)
    else:
        assert response.status_code == 200, response.text
    assert (sim.stats().start_failed, sim.stats().started, sim.stats().bad_requests) == (
        (1, 0, 0) if fails else (0, 1, 0)
    )


def test_start_failures_hit_about_p_of_old_ids_and_a_failed_id_keeps_failing(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    """p 0.3 over 400 old IDs fails about 30% of them (seeded); a retried start of a failed ID fails again."""
    sim = make_sim(rate_limit=10_000, faults=Faults(start_fail_after=60, p_start_fail=0.3))
    with httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET)) as client:
        rids = [acquired_id(client) for _ in range(400)]
    clock.advance(90)
    verdicts = [sim.check(rid, appid=APPID, cname=CNAME, uid=UID) for rid in rids]
    failed = [rid for rid, v in zip(rids, verdicts, strict=True) if v == "start failed"]
    assert 0.22 < len(failed) / len(rids) < 0.38
    assert set(verdicts) == {None, "start failed"}
    assert all(sim.check(rid, appid=APPID, cname=CNAME, uid=UID) == "start failed" for rid in failed[:10])
    assert (sim.stats().started, sim.stats().start_failed) == (400 - len(failed), len(failed) + 10)


def test_start_fail_after_zero_fails_starts_of_every_age_alike(
    make_sim: Callable[..., Simulator], clock: FakeClock
) -> None:
    """p_start_fail without start_fail_after: failures that do not depend on age, young IDs fail as often."""
    sim = make_sim(rate_limit=10_000, faults=Faults(p_start_fail=0.5))
    with httpx.Client(base_url=sim.url, auth=(CUSTOMER_ID, SECRET)) as client:
        rids = [acquired_id(client) for _ in range(200)]
    clock.advance(1)
    young = sum(sim.check(rid, appid=APPID, cname=CNAME, uid=UID) == "start failed" for rid in rids)
    assert 70 < young < 130


def test_simulate_passes_the_start_failure_flags_to_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ridpool simulate --start-fail-after 60 --p-start-fail 0.3` serves a simulator with those faults."""
    served: list[Simulator] = []
    monkeypatch.setattr(testing, "serve_forever", served.append)
    assert cli.main(["simulate", "--port", "0", "--start-fail-after", "60", "--p-start-fail", "0.3"]) == 0
    assert (served[0].faults.start_fail_after, served[0].faults.p_start_fail) == (60.0, 0.3)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--p-start-fail", "1.5"], "--p-start-fail must be from 0 to 1, got '1.5'"),
        (["--start-fail-after", "-1"], "--start-fail-after must be from 0 to below 300, got '-1'"),
        (["--start-fail-after", "soon"], "--start-fail-after must be a number, got 'soon'"),
    ],
)
def test_bad_start_failure_flags_exit_2_naming_the_flag(argv: list[str], named: str) -> None:
    """A probability outside [0, 1] or an age outside [0, 300) is refused in one line with exit 2."""
    ridpool_command = Path(sys.executable).with_name("ridpool")
    command = [str(ridpool_command), "simulate", *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr


# stats, lifecycle, CLI entry


def test_stats_endpoint_serves_the_counters_without_auth(client: httpx.Client, sim: Simulator) -> None:
    """GET /_sim/stats needs no credentials, matches stats() and is not itself counted."""
    acquire(client)
    acquire(client, uid="0")
    response = httpx.get(sim.url + "/_sim/stats")
    assert response.status_code == 200
    assert has_request_id(response)
    assert response.json() == vars(sim.stats())
    assert response.json()["requests"] == 2


def test_stop_is_idempotent_and_the_url_goes_away(make_sim: Callable[..., Simulator]) -> None:
    """stop() twice is fine; afterwards nothing listens and url raises."""
    sim = make_sim()
    url = sim.url
    sim.stop()
    sim.stop()
    with pytest.raises(RuntimeError):
        _ = sim.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/_sim/stats")


def test_context_manager_starts_and_stops(clock: FakeClock) -> None:
    """`with Simulator(...)` serves inside the block and stops at its end."""
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, clock=clock) as sim:
        assert httpx.get(sim.url + "/_sim/stats").status_code == 200
    with pytest.raises(RuntimeError):
        _ = sim.url


def test_serve_forever_prints_its_url_and_stops_on_sigterm(capsys: pytest.CaptureFixture[str]) -> None:
    """serve_forever announces the URL, serves, and returns with the simulator stopped on SIGTERM."""
    announced: list[str] = []
    ready = threading.Event()
    reachable: list[int] = []

    class Announcing(Simulator):
        @property
        def url(self) -> str:  # serve_forever reads it only once its signal handlers are in place
            announced.append(super().url)
            ready.set()
            return announced[0]

    sim = Announcing(customer_id=CUSTOMER_ID, customer_secret=SECRET)

    def poke_then_terminate() -> None:
        assert ready.wait(5)
        reachable.append(httpx.get(announced[0] + "/_sim/stats").status_code)
        os.kill(os.getpid(), signal.SIGTERM)

    poker = threading.Thread(target=poke_then_terminate)
    poker.start()
    serve_forever(sim)
    poker.join()
    assert reachable == [200]
    assert re.fullmatch(r"simulator listening on http://127\.0\.0\.1:\d+\n", capsys.readouterr().out)
    assert sim._server is None
