"""`ridpool.testing`: a loopback simulator of Agora's Cloud Recording REST API (`acquire` and `start`).

No machine running this project reaches Agora, so the daemon's tests and the demo talk to this instead. It is
meant to be at least as strict as the real service as the project's `agora-acquire.md` reference describes it:
HTTP Basic auth, a strict 1-second sliding-window rate limit over every Cloud Recording call, the documented
parameter checks and error bodies, and a ledger that binds each resourceId to its (appid, cname, uid), expires
it `validity` seconds after issue and refuses to start it twice. Injectable faults (latency, 5xx, malformed
200s, spurious 429s, overload, dropped connections) let callers prove they never mistake a bad answer for an ID;
starts of old IDs can be made to fail (`Faults.start_fail_after`, `p_start_fail`) to test freshness by age.

Only the standard library serves HTTP, so the simulator runs wherever the project does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, cast
from urllib.parse import urlsplit

__all__ = ["Faults", "SimStats", "Simulator", "serve_forever"]

_ACQUIRE = re.compile(r"/v1/apps/([^/]+)/cloud_recording/acquire")
_START = re.compile(r"/v1/apps/([^/]+)/cloud_recording/resourceid/([^/]+)/mode/(?:individual|mix|web)/start")
_APPID = re.compile(r"[0-9a-fA-F]{32}")
_CNAME = re.compile(r"[a-zA-Z0-9 !#$%&()+\-:;<=.>?@\[\]^_{}|~,]+")
_UID = re.compile(r"[0-9]{1,10}")  # bounded so int() never meets a huge digit string
_REGIONS = frozenset({"CN", "AP", "EU", "NA"})
_MAX_BODY = 1 << 20
_NO_ROUTE = {"message": "no Route matched with those values"}
_RATE_LIMITED = {"message": "API rate limit exceeded"}
_SERVER_ERRORS = ((500, "internal_error"), (501, "no_worker_manager_available"), (504, "allocate_timeout"))
_JSON = "application/json;charset=utf-8"
_FAULT_ORDER = ("overload", "5xx", "malformed", "429", "timeout")  # Faults.p_<kind>, tried in this order


@dataclass
class Faults:
    """Fault injection knobs, read afresh on every request so they can be changed while serving."""

    latency: float = 0.0
    jitter: float = 0.0
    p_5xx: float = 0.0
    p_timeout: float = 0.0
    timeout_hold: float = 15.0
    p_malformed: float = 0.0
    p_429: float = 0.0
    p_overload: float = 0.0
    # Starts of IDs older than `start_fail_after` seconds (since their acquire was issued, by the simulator's
    # clock) fail with probability `p_start_fail`, as Agora warns batch-acquired IDs may ("batch fetching
    # resource IDs followed by batch start requests may cause failures", without saying which). Agora documents
    # no code for it; the answer is the one it gives a stale ID, 400 code 433 "resource expired". The draw is
    # made once per ID: a retried start of a failed ID fails again. 0 s with p > 0: failures that do not depend
    # on age.
    start_fail_after: float = 0.0
    p_start_fail: float = 0.0


@dataclass(frozen=True)
class SimStats:
    """A snapshot of what the simulator has seen and answered since it was created."""

    requests: int = 0  # API requests, /_sim/* excluded
    acquired: int = 0  # 200s that carried a real resourceId
    started: int = 0  # IDs consumed by a successful start or check()
    reused: int = 0  # attempts to start an ID that was already started: the bug ridpool exists to prevent
    rate_limited: int = 0  # 429s caused by the real window
    spurious_429: int = 0
    errors_5xx: int = 0
    malformed: int = 0
    timeouts: int = 0
    overloaded: int = 0  # injected 400 code 406, kept apart from genuine client errors
    bad_requests: int = 0  # 4xx other than 429 and injected overload
    start_failed: int = 0  # starts refused because the ID was older than Faults.start_fail_after (injected)
    max_in_window: int = 0


@dataclass(slots=True)
class _Issued:
    appid: str
    cname: str
    uid: str
    issued_at: float
    used: bool = False
    doomed: bool | None = None  # drawn at its first start older than Faults.start_fail_after: it fails


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = _JSON
    hold: float | None = None  # timeout fault: wait this long, then close without answering


class _Reject(Exception):
    """Ends request handling with an error answer; `counter` names the SimStats field it counts towards."""

    def __init__(self, status: int, body: object, counter: str | None = "bad_requests") -> None:
        super().__init__(status)
        self.status, self.body, self.counter = status, body, counter


def _dump(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _bad(reason: str) -> _Reject:
    return _Reject(400, {"code": 2, "reason": reason})


def _parse_body(content_type: str, body: bytes | None) -> dict[str, Any]:
    media, *params = content_type.split(";")
    if media.strip().lower() != "application/json":
        raise _bad("invalid content type")
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise _bad("invalid content type")
    if body is None:
        raise _bad("unreadable request body")
    try:
        obj = json.loads(body.decode("utf-8"))
    except ValueError:  # also covers UnicodeDecodeError
        raise _bad("invalid JSON body") from None
    if not isinstance(obj, dict):
        raise _bad("request body must be a JSON object")
    return obj


def _check_appid(appid: str) -> None:
    if not _APPID.fullmatch(appid):
        raise _Reject(400, {"code": 400, "reason": "invalid_appid"})


def _check_uid(uid: object) -> str:
    if not (isinstance(uid, str) and _UID.fullmatch(uid) and 1 <= int(uid) <= 2**32 - 1):
        raise _bad("uid must be a string of decimal digits in 1..4294967295")
    return uid


def _is_int(value: object, low: int, high: int) -> bool:
    # bool is an int subclass, but JSON true is not a number to Agora
    return type(value) is int and low <= value <= high


def _validate_acquire(body: dict[str, Any]) -> tuple[str, str]:
    """Return (cname, uid) of a valid acquire body, else raise the answer Agora documents."""
    req = body.get("clientRequest")
    if not isinstance(req, dict):
        raise _bad("clientRequest must be an object")
    scene = req.get("scene", 0)
    if not _is_int(scene, 0, 2):
        raise _bad("clientRequest.scene must be 0, 1 or 2")
    cname = body.get("cname")
    if not isinstance(cname, str):
        raise _bad("cname must be a string")
    size = len(cname.encode("utf-8", "surrogatepass"))
    if scene == 1:  # web page recording: cname is only a session label
        if not 0 < size <= 128:
            raise _bad("cname must be 1..128 bytes in web page recording")
    elif not (size < 64 and _CNAME.fullmatch(cname)):
        raise _Reject(400, {"code": 401, "reason": "invalid_channel_name"})
    uid = _check_uid(body.get("uid"))
    if "region" in req and req["region"] not in _REGIONS:
        raise _bad("clientRequest.region must be one of CN, AP, EU, NA")
    if "resourceExpiredHour" in req and not _is_int(req["resourceExpiredHour"], 1, 720):
        raise _bad("clientRequest.resourceExpiredHour must be an integer in 1..720")
    if "regionAffinity" in req and not _is_int(req["regionAffinity"], 0, 4):
        raise _bad("clientRequest.regionAffinity must be an integer in 0..4")
    excluded = req.get("excludeResourceIds", [])
    if not (isinstance(excluded, list) and all(isinstance(x, str) for x in excluded)):
        raise _bad("clientRequest.excludeResourceIds must be a list of strings")
    if not isinstance(req.get("startParameter", {}), dict):
        raise _bad("clientRequest.startParameter must be an object")
    return cname, uid


class Simulator:
    """Agora's Cloud Recording acquire/start endpoints on a loopback HTTP server, plus a ledger of issued IDs."""

    def __init__(
        self,
        *,
        customer_id: str,
        customer_secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: int = 10,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.monotonic,
        validity: float = 300.0,
        seed: int | None = None,
    ) -> None:
        self.faults = faults if faults is not None else Faults()
        self._customer_id = customer_id
        self._credentials = f"{customer_id}:{customer_secret}".encode()
        self._host, self._port = host, port
        self._rate_limit, self._clock, self._validity = rate_limit, clock, validity
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._lock = threading.Lock()  # ledger, counters and rate window; never taken while holding _rng_lock
        self._ledger: dict[str, _Issued] = {}
        self._last_prune = clock()
        # Only one customer can authenticate, so one window is the per-customer_id window.
        self._window: deque[float] = deque()
        self._counts = {f.name: 0 for f in fields(SimStats)}
        self._life = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_cond = threading.Condition()

    def __repr__(self) -> str:  # the secret must not leak through a repr in a traceback
        return f"Simulator(customer_id={self._customer_id!r}, running={self._server is not None})"

    def start(self) -> Simulator:
        """Bind (port 0 picks a free one) and serve from a daemon thread."""
        with self._life:
            if self._server is not None:
                raise RuntimeError("simulator already started")
            self._stopping.clear()
            server = _Server(self, (self._host, self._port))
            # A short poll keeps stop() fast; shutdown() waits for the loop to notice.
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="ridpool-sim", daemon=True
            )
            thread.start()
            self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving and close every connection; idempotent, and bounded even with held requests."""
        with self._life:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            self._server = self._thread = None
            self._stopping.set()  # wakes held "timeout" requests and latency sleeps at once
            server.shutdown()
            with self._conns_cond:
                conns = list(self._conns)
            for conn in conns:  # idle keep-alive handlers block in recv until their socket is shut
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            server.server_close()
            thread.join()
            with self._conns_cond:
                self._conns_cond.wait_for(lambda: not self._conns, timeout=1.0)

    def __enter__(self) -> Simulator:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        server = self._server
        if server is None:
            raise RuntimeError("simulator is not running")
        return f"http://{self._host}:{server.server_address[1]}"

    def check(self, resource_id: str, *, appid: str, cname: str, uid: str) -> str | None:
        """None if the ID may be started now (and mark it started), else a short reason why not: "unknown",
        "wrong appid" (cname, uid), "used", "expired", or "start failed" (injected by age, see Faults)."""
        with self._lock:
            rec = self._ledger.get(resource_id)
            if rec is None:
                return "unknown"
            for name, want, got in (("appid", rec.appid, appid), ("cname", rec.cname, cname), ("uid", rec.uid, uid)):
                if want != got:
                    return f"wrong {name}"
            # Reuse is reported ahead of expiry: a reused old ID is the worse bug and must not hide behind it.
            if rec.used:
                self._counts["reused"] += 1
                return "used"
            age = self._clock() - rec.issued_at
            if age >= self._validity:
                return "expired"
            f = self.faults
            if rec.doomed is None and f.p_start_fail > 0 and age > f.start_fail_after:
                with self._rng_lock:
                    rec.doomed = self._rng.random() < f.p_start_fail
            if rec.doomed:
                self._counts["start_failed"] += 1
                return "start failed"
            rec.used = True
            self._counts["started"] += 1
            return None

    def stats(self) -> SimStats:
        with self._lock:
            return SimStats(**self._counts)

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                self._counts[name] += 1

    def _answer(self, method: str, path: str, auth: str | None, ctype: str, body: bytes | None) -> _Answer:
        self._count("requests")
        try:
            return self._route(method, path, auth, ctype, body)
        except _Reject as reject:
            if reject.counter is not None:
                self._count(reject.counter)
            return _Answer(reject.status, _dump(reject.body))

    def _route(self, method: str, path: str, auth: str | None, ctype: str, body: bytes | None) -> _Answer:
        acquire = _ACQUIRE.fullmatch(path) if method == "POST" else None
        start = _START.fullmatch(path) if method == "POST" else None
        if acquire is None and start is None:
            raise _Reject(404, _NO_ROUTE)
        self._authenticate(auth)
        self._admit()
        obj = _parse_body(ctype, body)
        if acquire is not None:
            _check_appid(acquire[1])
            return self._acquire(acquire[1], *_validate_acquire(obj))
        assert start is not None
        _check_appid(start[1])
        if not isinstance(obj.get("cname"), str):
            raise _bad("cname must be a string")
        uid = _check_uid(obj.get("uid"))
        if not isinstance(obj.get("clientRequest"), dict):
            raise _bad("clientRequest must be an object")
        return self._start(start[1], start[2], obj["cname"], uid)

    def _authenticate(self, header: str | None) -> None:
        if header is None:
            raise _Reject(401, {"message": "Unauthorized"})
        scheme, _, token = header.strip().partition(" ")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        # compare_digest runs even for a wrong scheme so timing says nothing about which part was wrong
        if not hmac.compare_digest(given, self._credentials) or scheme.lower() != "basic":
            raise _Reject(401, {"message": "Invalid authentication credentials"})

    def _admit(self) -> None:
        """Count this request in the sliding 1 s window; refuse it if `rate_limit` already arrived there."""
        with self._lock:
            now, window = self._clock(), self._window
            while window and now - window[0] >= 1.0:
                window.popleft()
            over = len(window) >= self._rate_limit
            window.append(now)  # strict like Agora: refused requests use up the budget too
            self._counts["max_in_window"] = max(self._counts["max_in_window"], len(window))
        if over:
            raise _Reject(429, _RATE_LIMITED, "rate_limited")

    def _acquire(self, appid: str, cname: str, uid: str) -> _Answer:
        fault = self._fault(cname, uid)
        if fault is not None:
            return fault
        rid = secrets.token_urlsafe(180)
        with self._lock:
            now = self._clock()
            self._ledger[rid] = _Issued(appid, cname, uid, now)
            self._counts["acquired"] += 1
            if now - self._last_prune >= self._validity:  # occasional, so a long demo stays bounded
                self._last_prune = now
                horizon = 2 * self._validity
                self._ledger = {k: r for k, r in self._ledger.items() if now - r.issued_at < horizon}
        return _Answer(200, _dump({"cname": cname, "uid": uid, "resourceId": rid}))

    def _start(self, appid: str, rid: str, cname: str, uid: str) -> _Answer:
        reason = self.check(rid, appid=appid, cname=cname, uid=uid)
        if reason is None:
            body = {"cname": cname, "uid": uid, "resourceId": rid, "sid": uuid.uuid4().hex}
            return _Answer(200, _dump(body))
        if reason == "unknown":
            raise _Reject(404, {"code": 404, "reason": "resource not found"})
        if reason == "expired":
            raise _Reject(400, {"code": 433, "reason": "resource expired"})
        if reason == "start failed":  # injected by age (Faults.start_fail_after), counted by check()
            raise _Reject(400, {"code": 433, "reason": "resource expired"}, None)
        if reason == "used":  # already counted as `reused` by check()
            raise _Reject(201, {"code": 7, "reason": "resource already used by another session"}, None)
        raise _Reject(400, {"code": 432, "reason": f"resource was acquired with a different {reason[6:]}"})

    def _fault(self, cname: str, uid: str) -> _Answer | None:
        """Maybe replace an otherwise successful acquire answer by an injected fault."""
        f = self.faults
        chances = [(kind, getattr(f, f"p_{kind}")) for kind in _FAULT_ORDER]
        with self._rng_lock:
            kind = next((k for k, p in chances if p > 0 and self._rng.random() < p), None)
            pick = self._rng.randrange(6)
        if kind == "overload":
            raise _Reject(400, {"code": 406, "reason": "vendor_over_load"}, "overloaded")
        if kind == "5xx":
            code, reason = _SERVER_ERRORS[pick % 3]
            raise _Reject(code, {"code": code, "reason": reason}, "errors_5xx")
        if kind == "429":
            raise _Reject(429, _RATE_LIMITED, "spurious_429")
        if kind == "malformed":
            self._count("malformed")
            if pick == 5:
                return _Answer(200, b"<html><body>upstream hiccup</body></html>", "text/html")
            base: dict[str, Any] = {"cname": cname, "uid": uid}
            bodies: list[object] = [
                base,
                {**base, "resourceId": ""},
                {**base, "resourceId": 12345678},
                {**base, "resourceId": None},
                # a plausible answer wrapped in a list: a lenient parser must still refuse it
                [{**base, "resourceId": secrets.token_urlsafe(180)}],
            ]
            return _Answer(200, _dump(bodies[pick]))
        if kind == "timeout":
            self._count("timeouts")
            return _Answer(0, b"", hold=max(0.0, f.timeout_hold))
        return None

    def _delay(self) -> float:
        f = self.faults
        if f.latency <= 0 and f.jitter <= 0:
            return 0.0
        with self._rng_lock:
            jitter = self._rng.uniform(-f.jitter, f.jitter) if f.jitter > 0 else 0.0
        return max(0.0, f.latency + jitter)

    def _opened(self, conn: socket.socket) -> None:
        with self._conns_cond:
            if self._stopping.is_set():  # accepted just before stop() looked: do not let it linger
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._conns.add(conn)

    def _closed(self, conn: socket.socket) -> None:
        with self._conns_cond:
            self._conns.discard(conn)
            self._conns_cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sim: Simulator, address: tuple[str, int]) -> None:
        self.sim = sim
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up (timeouts) and stop() cutting sockets are expected, not worth a traceback.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real service offers
    default_request_version = "HTTP/1.0"  # so even an unparsable request line gets headers and X-Request-Id
    timeout = 60.0  # an idle keep-alive connection must not pin a thread forever
    # Headers and body leave in one segment; two small writes meet delayed ACKs and cost ~40 ms per answer.
    wbufsize = -1
    disable_nagle_algorithm = True

    @property
    def sim(self) -> Simulator:
        return cast(_Server, self.server).sim

    def version_string(self) -> str:
        return "ridpool-simulator"

    def setup(self) -> None:
        super().setup()
        self.sim._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sim._closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: tests and the demo must not be flooded on stderr (and nothing here may log a secret)."""

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Reached for unparsable requests and unknown methods; keep Agora's JSON shape and X-Request-Id.
        self.close_connection = True  # the request body, if any, was not read
        if code == HTTPStatus.NOT_IMPLEMENTED:
            answer = self.sim._answer(self.command, "", None, "", None)  # an unknown method matches no route
        else:
            answer = _Answer(code, _dump({"message": message or HTTPStatus(code).phrase}))
            self.sim._count("requests", "bad_requests")
        self._send(answer)

    def _read_body(self) -> bytes | None:
        """The request body, or None (and close after answering) when it cannot be read safely."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()
        else:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            body = self.rfile.read(length) if 0 <= length <= _MAX_BODY else None
        if body is None:  # the stream position is unknown now, so the connection cannot be reused
            self.close_connection = True
        return body

    def _read_chunked(self) -> bytes | None:
        body = bytearray()
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";")[0], 16)
            except ValueError:
                return None
            if size < 0 or len(body) + size > _MAX_BODY:
                return None
            if size == 0:
                while self.rfile.readline(1024).strip():  # optional trailers, up to the blank line
                    pass
                return bytes(body)
            body += self.rfile.read(size)
            if self.rfile.readline(1024).strip():
                return None

    def _dispatch(self) -> None:
        # Read the body first, whatever the answer: unread bytes would corrupt the next keep-alive request.
        body = self._read_body()
        path = urlsplit(self.path).path
        if self.command == "GET" and path == "/_sim/stats":
            self._send(_Answer(200, _dump(asdict(self.sim.stats()))))
            return
        headers = self.headers
        answer = self.sim._answer(
            self.command, path, headers.get("Authorization"), headers.get("Content-Type", ""), body
        )
        if answer.hold is not None:
            self.sim._stopping.wait(answer.hold)
            self.close_connection = True  # no answer at all, like a gateway that gave up
            return
        delay = self.sim._delay()
        if delay > 0:
            self.sim._stopping.wait(delay)
        self._send(answer)

    def _send(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        self.send_header("X-Request-Id", uuid.uuid4().hex)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)


def serve_forever(sim: Simulator) -> None:
    """Serve until SIGINT or SIGTERM (for `ridpool simulate`), then stop the simulator."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if sim._server is None:
            sim.start()
        print(f"simulator listening on {sim.url}", flush=True)
        while not stop.wait(0.5):  # a bounded wait keeps the main thread responsive to signals
            pass
    finally:
        sim.stop()
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
