"""The admin API: JSON over HTTP, on the instance directory's Unix socket and on ``--admin-listen``.

Passenger's Core API endpoints (passenger-gls.md §4.1), in twisted.web.  Every
request is authorized first (``auth``); a refusal is a 401 (who are you?) or a
403 (not allowed) with the reason in a JSON body.  Requests that change
something must be POSTs with a JSON body, which a browser cannot send from
another site without asking first (no cross-site request forgery through the
dashboard's basic auth).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.http import RESPONSES
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from passenger import __version__
from passenger.admin import dashboard, state
from passenger.admin.auth import FULL, NONE, READ, Passwords, Verdict, authorize

if TYPE_CHECKING:
    from passenger.service import PassengerService

#: An endpoint's answer: status, content type, body.
Answer = tuple[int, bytes, bytes]
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
#: Largest request body the API reads (its requests are a few bytes of JSON).
MAX_BODY = 65536
#: Seconds an admin connection may stay idle.
IDLE_TIMEOUT = 60
#: On every answer: the dashboard may not be framed by another site (clickjacking its buttons).
SECURITY_HEADERS = (
    (b"Cache-Control", b"no-store"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Content-Security-Policy", b"frame-ancestors 'none'"),
)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_answer(value: object, status: int = 200) -> Answer:
    return status, JSON, json.dumps(value, indent=2).encode() + b"\n"


class AdminAPI(Resource):
    """Every admin endpoint: a table of (method, path) to (access level, handler)."""

    isLeaf = True
    log = Logger()

    def __init__(self, service: PassengerService, passwords: Passwords) -> None:
        super().__init__()
        self.service = service
        self.passwords = passwords
        self.process_info = state.ProcessInfo()
        self.routes: dict[tuple[bytes, bytes], tuple[int, Callable[[Request], Answer]]] = {
            (b"GET", b"/"): (READ, self.dashboard_page),
            (b"GET", b"/dashboard.json"): (READ, self.dashboard_state),
            (b"GET", b"/ping.json"): (READ, lambda r: json_answer({"status": "ok"})),
            (b"GET", b"/version.json"): (READ, lambda r: json_answer(
                {"program_name": "passenger", "program_version": __version__, "core_version": __version__})),
            (b"GET", b"/pool.json"): (READ, lambda r: json_answer(self.pool_state())),
            (b"GET", b"/pool.txt"): (READ, self.pool_text),
            (b"GET", b"/pool.xml"): (READ, lambda r: (200, b"application/xml", state.render_pool_xml(self.pool_state()))),
            (b"GET", b"/server.json"): (READ, lambda r: json_answer(self.server_state())),
            (b"GET", b"/metrics"): (READ, self.metrics),
            (b"POST", b"/pool/restart_app_group.json"): (FULL, self.restart_app_group),
            (b"POST", b"/pool/detach_process.json"): (FULL, self.detach_process),
            (b"POST", b"/reopen_logs.json"): (FULL, self.reopen_logs),
        }

    def render(self, request: Request) -> bytes:
        path = request.path.rstrip(b"/") or b"/"
        method = request.method
        if method == b"HEAD":
            method = b"GET"
        try:
            answer = self._answer(request, method, path)
        except ApiError as e:
            answer = json_answer({"error": str(e)}, e.status)
        except Exception:
            self.log.failure("Admin API request {method} {path} failed", method=method, path=path)
            answer = json_answer({"error": "internal error; see the server log"}, 500)
        status, content_type, body = answer
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type)
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        if status == 401:
            request.setHeader(b"WWW-Authenticate", b'Basic realm="passenger admin"')
        return body

    def _answer(self, request: Request, method: bytes, path: bytes) -> Answer:
        route = self.routes.get((method, path))
        if route is None:
            if any(p == path for _, p in self.routes):
                allowed = sorted({m.decode() for m, p in self.routes if p == path})
                request.setHeader(b"Allow", ", ".join(allowed).encode())
                raise ApiError(405, f"{path.decode()} takes {' or '.join(allowed)}")
            raise ApiError(404, f"no such endpoint: {path.decode(errors='replace')}")
        level, handler = route
        verdict = self.verdict(request.channel.transport, request.getHeader(b"authorization"))
        if verdict.level == NONE:
            raise ApiError(401, verdict.reason)
        if verdict.level < level:
            raise ApiError(403, verdict.reason)
        request.access_level = verdict.level  # type: ignore[attr-defined]
        if method == b"POST":
            content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
            if content_type != JSON:
                raise ApiError(415, "send the request body as JSON (Content-Type: application/json)")
        return handler(request)

    def verdict(self, transport: Any, authorization: bytes | None) -> Verdict:
        return authorize(transport, authorization, self.passwords)

    def refuse_early(self, transport: Any, headers: Any, length: int | None) -> tuple[int, str] | None:
        """Judge a request by its head, before any of its body is read: (status, reason) to refuse it."""
        authorization = headers.getRawHeaders(b"authorization", [None])[0]
        verdict = self.verdict(transport, authorization)
        if verdict.level == NONE:
            return 401, verdict.reason
        if headers.hasHeader(b"transfer-encoding"):
            return 411, "send the request body with a Content-Length"
        if length is not None and length > MAX_BODY:
            return 413, f"request body too large (at most {MAX_BODY} bytes)"
        return None

    # Reading.
    def pool_state(self) -> dict[str, Any]:
        pool = self.service.pool
        if pool is None:
            raise ApiError(503, "the server is starting")
        return state.pool_state(pool, self.service.reactor.seconds(), self.process_info)

    def server_state(self) -> dict[str, Any]:
        front = self.service.front
        if front is None:
            raise ApiError(503, "the server is starting")
        return state.server_state(front, self.service.reactor.seconds())

    def pool_text(self, request: Request) -> Answer:
        verbose = request.args.get(b"verbose", [b""])[0] in (b"1", b"true")
        return 200, TEXT, state.render_pool_text(self.pool_state(), verbose).encode()

    def metrics(self, request: Request) -> Answer:
        from passenger.admin import metrics  # prometheus-client costs memory only once someone scrapes

        body, content_type = metrics.render(self.service)
        return 200, content_type.encode(), body

    def dashboard_page(self, request: Request) -> Answer:
        return 200, b"text/html; charset=utf-8", dashboard.page()

    def dashboard_state(self, request: Request) -> Answer:
        data = dashboard.state(self.service, self.pool_state())
        data["can_act"] = getattr(request, "access_level", NONE) >= FULL
        return 200, JSON, json.dumps(data, separators=(",", ":")).encode()  # polled every second: compact

    # Acting.
    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        content = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(content) > MAX_BODY:
            raise ApiError(413, "request body too large")
        try:
            body = json.loads(content or b"{}")
        except ValueError as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def restart_app_group(self, request: Request) -> Answer:
        body = self._body(request)
        name = body.get("name")
        method = body.get("restart_method", "blocking")
        if not isinstance(name, str):
            raise ApiError(400, 'give the app group to restart: {"name": NAME, "restart_method": "blocking"}')
        if method not in ("blocking", "rolling"):
            raise ApiError(400, f"restart_method {method!r}: expected blocking or rolling")
        pool = self.service.pool
        group = pool.groups.get(name) if pool is not None else None
        if group is None:
            raise ApiError(404, f"no app group named {name!r}")
        self.log.info("Admin API: restarting {app} ({method})", app=name, method=method)
        group.restart(rolling=method == "rolling", reason="asked through the admin API")
        return json_answer({"restarted": True, "name": name, "restart_method": method})

    def detach_process(self, request: Request) -> Answer:
        pid = self._body(request).get("pid")
        if isinstance(pid, str) and pid.isdigit():
            pid = int(pid)
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise ApiError(400, 'give the process to detach: {"pid": PID}')
        pool = self.service.pool
        found = pool.find_process(pid) if pool is not None else None
        if found is None:
            raise ApiError(404, f"no process with pid {pid} in the pool")
        group, process = found
        if not group.detach(process):
            raise ApiError(409, f"process {pid} is not serving (it is {process.state}"
                                f"{', draining' if process.draining else ''}); nothing to detach")
        return json_answer({"detached": True, "pid": pid, "app": group.app.name})

    def reopen_logs(self, request: Request) -> Answer:
        self.service.reopen_logs()
        return json_answer({"status": "ok"})


class AdminRequest(Request):
    """A request refused from its head alone when it must be (unauthenticated, chunked or too large a body):
    nobody can make the server read or store a body it will not use."""

    refused = False

    def gotLength(self, length: int | None) -> None:
        resource = self.channel.site.resource  # type: ignore[attr-defined]
        refusal = resource.refuse_early(self.channel.transport, self.requestHeaders, length)
        if refusal is None:
            super().gotLength(length)
            return
        self.refused = True
        self.content = io.BytesIO()
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the refusal
        status, reason = refusal
        body = json.dumps({"error": reason}, indent=2).encode() + b"\n"
        head = [b"HTTP/1.1 %d %s\r\n" % (status, RESPONSES.get(status, b"Error")),
                b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n" % len(body)]
        head += [name + b": " + value + b"\r\n" for name, value in SECURITY_HEADERS]
        if status == 401:
            head.append(b'WWW-Authenticate: Basic realm="passenger admin"\r\n')
        transport: Any = self.channel.transport
        transport.write(b"".join(head) + b"\r\n" + body)
        transport.loseConnection()  # stops reading too: the body is never received

    def handleContentChunk(self, data: bytes) -> None:
        if not self.refused:
            super().handleContentChunk(data)

    def process(self) -> None:
        if not self.refused:
            super().process()


def admin_site(service: PassengerService, passwords: Passwords) -> Site:
    site = Site(AdminAPI(service, passwords), requestFactory=AdminRequest, timeout=IDLE_TIMEOUT)
    site.displayTracebacks = False
    site.noisy = False
    return site
