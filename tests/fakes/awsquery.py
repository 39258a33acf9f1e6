"""FakeAwsQuery: the AWS Query-protocol actions moto 5.x lacks, over real HTTP on 127.0.0.1.

Handled locally and recorded:

* Auto Scaling (API 2011-01-01): ``CompleteLifecycleAction``, ``RecordLifecycleActionHeartbeat``
* CloudFormation (API 2010-05-15): ``SignalResource``

Requests are form-encoded POSTs with ``Action=...`` (what botocore's ``query`` protocol sends);
replies are the XML envelopes botocore expects, e.g.
``<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
<CompleteLifecycleActionResult/><ResponseMetadata><RequestId>...``. Missing required
parameters and bad enum values (LifecycleActionResult CONTINUE|ABANDON, Status SUCCESS|FAILURE)
get a ``ValidationError`` like AWS would send, because botocore only validates types client-side.

Any other action goes to ``upstream`` (e.g. the moto server) verbatim when one is given, so a
client pointed here still gets moto's DescribeAutoScalingInstances and friends; without an
upstream it is answered ``400 InvalidAction``. One server serves both services; point both
``AUTO_SCALING_ENDPOINT_ENV`` and ``CLOUDFORMATION_ENDPOINT_ENV`` at ``.url``.

The env var names come from botocore itself (configprovider ``_get_service_env_var_name``):
``AWS_ENDPOINT_URL_`` + the service id with spaces/hyphens as underscores, upper-cased. The
service id of "autoscaling" is "Auto Scaling", hence ``AWS_ENDPOINT_URL_AUTO_SCALING`` (not
``..._AUTOSCALING``, which botocore silently ignores).
"""

from __future__ import annotations

import functools
import http.client
import re
import socket
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, TypedDict
from xml.sax.saxutils import escape

from pullboot.sim._server import LoopbackService
from tests.fakes._server import FakeHTTPHandler, Relayed, SwitchableServer, parse_upstream, relay

AUTO_SCALING_ENDPOINT_ENV: Final = "AWS_ENDPOINT_URL_AUTO_SCALING"
CLOUDFORMATION_ENDPOINT_ENV: Final = "AWS_ENDPOINT_URL_CLOUDFORMATION"
ENDPOINT_ENVS: Final = (AUTO_SCALING_ENDPOINT_ENV, CLOUDFORMATION_ENDPOINT_ENV)

AUTO_SCALING_NS: Final = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
CLOUDFORMATION_NS: Final = "http://cloudformation.amazonaws.com/doc/2010-05-15/"

_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/([^/,]+)/([^/,]+)/aws4_request")


@dataclass(frozen=True)
class _Action:
    service: str
    version: str
    namespace: str
    has_result: bool
    required: tuple[str, ...]
    enums: dict[str, frozenset[str]] = field(default_factory=dict)
    default_error: str = "ValidationError"


_ACTIONS: Final[dict[str, _Action]] = {
    "CompleteLifecycleAction": _Action(
        "autoscaling", "2011-01-01", AUTO_SCALING_NS, True,
        ("LifecycleHookName", "AutoScalingGroupName", "LifecycleActionResult"),
        {"LifecycleActionResult": frozenset({"CONTINUE", "ABANDON"})},
    ),
    "RecordLifecycleActionHeartbeat": _Action(
        "autoscaling", "2011-01-01", AUTO_SCALING_NS, True,
        ("LifecycleHookName", "AutoScalingGroupName"),
    ),
    "SignalResource": _Action(
        "cloudformation", "2010-05-15", CLOUDFORMATION_NS, False,
        ("StackName", "LogicalResourceId", "UniqueId", "Status"),
        {"Status": frozenset({"SUCCESS", "FAILURE"})},
    ),
}
HANDLED_ACTIONS: Final = frozenset(_ACTIONS)


class QueryCall(TypedDict):
    """One recorded request: ``params`` excludes Action and Version."""

    action: str
    version: str
    service: str | None  # signing service from the SigV4 credential scope, if signed
    region: str | None
    params: dict[str, str]
    status: int
    forwarded: bool


@dataclass
class _Fault:
    remaining: int
    code: str
    message: str | None
    status: int
    error_type: str


def _default_message(action: str, params: dict[str, str]) -> str:
    if action == "SignalResource":
        return (f"Resource {params.get('LogicalResourceId', '?')} in stack "
                f"{params.get('StackName', '?')} is in CREATE_COMPLETE state and cannot be "
                "signaled")
    return f"No active Lifecycle Action found with instance ID {params.get('InstanceId', '?')}"


def error_xml(code: str, message: str, *, namespace: str | None, error_type: str = "Sender",
              request_id: str | None = None) -> bytes:
    """An AWS Query ``ErrorResponse`` document, as botocore's query parser expects it."""
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    return (
        f"<ErrorResponse{xmlns}><Error><Type>{escape(error_type)}</Type>"
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        f"<RequestId>{request_id or uuid.uuid4()}</RequestId></ErrorResponse>"
    ).encode()


def success_xml(action: str, spec: _Action, request_id: str | None = None) -> bytes:
    """The empty-result success envelope for ``action``."""
    result = f"<{action}Result/>" if spec.has_result else ""
    return (
        f'<{action}Response xmlns="{spec.namespace}">{result}'
        f"<ResponseMetadata><RequestId>{request_id or uuid.uuid4()}</RequestId>"
        f"</ResponseMetadata></{action}Response>"
    ).encode()


class FakeAwsQuery(LoopbackService):
    """HTTP fake for CompleteLifecycleAction, RecordLifecycleActionHeartbeat and SignalResource.

    ``upstream``: base URL (``http://127.0.0.1:PORT``) that receives every other action
    unchanged; None answers them 400 InvalidAction. The constructor does no I/O.
    """

    def __init__(self, *, upstream: str | None = None, start_down: bool = False) -> None:
        self._upstream = parse_upstream(upstream) if upstream else None
        self._start_down = start_down
        self._lock = threading.Lock()
        self._calls: list[QueryCall] = []
        self._faults: dict[str, _Fault] = {}
        self._server = SwitchableServer(
            functools.partial(_QueryHandler, fake=self), name="fake-aws-query"
        )

    def env(self) -> dict[str, str]:
        """Service-specific endpoint env vars routing Auto Scaling and CloudFormation here."""
        return {name: self.url for name in ENDPOINT_ENVS}

    def fail_next(self, action: str, n: int = 1, *, code: str = "ValidationError",
                  message: str | None = None, status: int = 400,
                  error_type: str = "Sender") -> None:
        """Answer the next ``n`` calls of ``action`` with an AWS Query error.

        ``message`` None derives an AWS-like text from the request (e.g. "No active Lifecycle
        Action found with instance ID i-..."). botocore raises ClientError with ``code``; note
        that it retries codes such as Throttling and statuses 500/503 on its own.
        """
        if action not in _ACTIONS:
            raise ValueError(f"{action} is not handled by the fake (forwarded or invalid)")
        with self._lock:
            self._faults[action] = _Fault(n, code, message, status, error_type)

    @property
    def calls(self) -> list[QueryCall]:
        """Snapshot of every call received (handled, failed or forwarded), in order."""
        with self._lock:
            return [_copy_call(c) for c in self._calls]

    def calls_for(self, action: str) -> list[QueryCall]:
        """Snapshot of the calls of one action."""
        return [c for c in self.calls if c["action"] == action]

    def clear(self) -> None:
        """Forget recorded calls and pending faults."""
        with self._lock:
            self._calls.clear()
            self._faults.clear()

    # -- request handling (called from handler threads) --------------------------------------

    def _handle(self, form: dict[str, str],
                authorization: str) -> tuple[tuple[int, bytes] | None, QueryCall]:
        """Record the call; answer a handled action, or None when it must be forwarded."""
        action = form.pop("Action", "")
        version = form.pop("Version", "")
        scope = _CREDENTIAL_SCOPE.search(authorization)
        spec = _ACTIONS.get(action)
        forward = spec is None and self._upstream is not None
        status, body = 200, b""
        if spec is None:
            if not forward:
                status, body = 400, error_xml(
                    "InvalidAction", f"The action {action or '(none)'} is not valid for this "
                    "web service.", namespace=None)
        else:
            status, body = self._answer(action, spec, form)
        call = QueryCall(
            action=action, version=version,
            service=scope.group(2) if scope else None,
            region=scope.group(1) if scope else None,
            params=dict(form), status=0 if forward else status, forwarded=forward,
        )
        with self._lock:
            self._calls.append(call)
        return (None if forward else (status, body)), call

    def _answer(self, action: str, spec: _Action, params: dict[str, str]) -> tuple[int, bytes]:
        with self._lock:
            fault = self._faults.get(action)
            if fault is not None and fault.remaining > 0:
                fault.remaining -= 1
                message = fault.message or _default_message(action, params)
                return fault.status, error_xml(fault.code, message, namespace=spec.namespace,
                                               error_type=fault.error_type)
        problems = [f"Value null at '{name[0].lower() + name[1:]}' failed to satisfy constraint: "
                    "Member must not be null" for name in spec.required if name not in params]
        for name, allowed in spec.enums.items():
            if name in params and params[name] not in allowed:
                problems.append(f"Value '{params[name]}' at '{name[0].lower() + name[1:]}' failed "
                                f"to satisfy constraint: Member must satisfy enum value set: "
                                f"[{', '.join(sorted(allowed))}]")
        if (action == "CompleteLifecycleAction" and "InstanceId" not in params
                and "LifecycleActionToken" not in params):
            problems.append("Either an instance ID or a lifecycle action token must be given")
        if problems:
            message = f"{len(problems)} validation error(s) detected: " + "; ".join(problems)
            return 400, error_xml("ValidationError", message, namespace=spec.namespace)
        return 200, success_xml(action, spec)

    def _forward(self, handler: _QueryHandler, body: bytes, call: QueryCall) -> Relayed:
        """Send the request to the upstream unchanged; 502 when it is unreachable."""
        assert self._upstream is not None
        try:
            answer = relay(self._upstream, handler.command, handler.path, handler.headers, body)
        except (OSError, http.client.HTTPException) as exc:
            answer = Relayed(502, "Bad Gateway", [("Content-Type", "text/plain")],
                             f"upstream: {exc}".encode())
        with self._lock:
            call["status"] = answer.status
        return answer


def _copy_call(call: QueryCall) -> QueryCall:
    copied = QueryCall(**call)
    copied["params"] = dict(call["params"])
    return copied


class _QueryHandler(FakeHTTPHandler):
    """Per-connection handler; all state lives in the FakeAwsQuery."""

    def __init__(self, request: socket.socket, client_address: Any,
                 server: SwitchableServer, *, fake: FakeAwsQuery) -> None:
        self.fake = fake
        super().__init__(request, client_address, server)

    def do_POST(self) -> None:
        body = self.read_body()
        query = urllib.parse.urlsplit(self.path).query
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        pairs += urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        answer, call = self.fake._handle(dict(pairs), self.headers.get("Authorization", ""))
        if answer is not None:
            status, xml = answer
            self.send_plain(status, xml, content_type="text/xml",
                            headers={"x-amzn-RequestId": str(uuid.uuid4())})
            return
        relayed = self.fake._forward(self, body, call)
        self.send_response_only(relayed.status, relayed.reason)
        for name, value in relayed.headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(relayed.body)))
        self.end_headers()
        self.wfile.write(relayed.body)

    do_GET = do_POST
