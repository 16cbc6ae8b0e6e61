"""EC2 and S3 from moto in server mode, on loopback, made to keep EC2's promises the fleet
relies on (ClientToken idempotency; no crash under concurrent calls; a terminated instance
forgotten after a while), with EC2's documented throttling when LaunchLog.throttle is set
(token buckets per region and action, sim/ec2_limits.py), and a throttling knob besides: a
share of RunInstances calls is answered `RequestLimitExceeded` as AWS does under load.
Every RunInstances is logged (when, which subnet, what it got), so tests can check the
fleet's launch rate limit and which subnets it tried. RunInstances launches
MaxCount instances (moto alone launches MinCount), each with its AmiLaunchIndex, or fewer
with the partial fulfilment knob."""

import random
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs, urlencode
from xml.etree import ElementTree

from moto.ec2 import utils as moto_ec2_utils
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from sim.ec2_limits import Ec2Throttle, credential_scope

# EC2 filters instances by the ClientToken of their launch; moto keeps the token on each
# instance (Ec2Front passes it through) but does not offer the filter.
moto_ec2_utils.filter_dict_attribute_mapping.setdefault("client-token", "client_token")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def error_body(code: str, message: str) -> bytes:
    """An EC2 error answer, as EC2's query API writes it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message>"
        "</Error></Errors><RequestID>sim-error</RequestID></Response>"
    ).encode()


THROTTLED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
    b"<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
    b"</Error></Errors><RequestID>sim-throttle</RequestID></Response>"
)


# The simulator's own EC2 client (its watch of the instances, the tests' look-ups) signs
# with this key id: its calls stand for no one's and take no tokens from the buckets.
INSPECTOR_KEY_ID = "sim-inspector"


@dataclass(frozen=True)
class LaunchCall:
    """One RunInstances as the simulated EC2 saw it."""

    at: float  # time.monotonic()
    subnet_id: str | None
    client_token: str
    outcome: str  # launched, replayed, refused, throttled


@dataclass
class LaunchLog:
    """What the simulated EC2 API saw of RunInstances."""

    throttle_rate: float = 0.0
    # Every RunInstances is held this long before EC2 acts on it (and other calls go on
    # meanwhile): a launch provably in flight. The launch happens even if the caller has
    # gone away by then, as on EC2 once a request is in.
    launch_delay_seconds: float = 0.0
    in_flight: int = 0
    # Every RunInstances is refused with this EC2 error code while it is set (a capacity
    # blip, a quota, a bad AMI: "Error codes for the Amazon EC2 API"); with
    # refuse_in_subnets, only those in these subnets (no room in one zone).
    refuse_with: str | None = None
    refuse_in_subnets: frozenset[str] | None = None
    refused: int = 0
    calls: list[LaunchCall] = field(default_factory=list)
    # Partial fulfilment: a RunInstances launches at most this many instances (EC2 launches
    # between MinCount and MaxCount, as many as it has room for); None: MaxCount, as EC2
    # with room. Asked for fewer than MinCount, it refuses InsufficientInstanceCapacity.
    fulfil_at_most: int | None = None
    launched_instances: int = 0  # instances RunInstances made (a batch makes several)
    # EC2 forgets a terminated instance about an hour after its termination: it is gone
    # from DescribeInstances (by filter too), and naming its id answers
    # InvalidInstanceID.NotFound. None: never, as moto. This many seconds stand for it.
    forget_terminated_seconds: float | None = None
    launched_at: list[float] = field(default_factory=list)
    throttled: int = 0
    replayed: int = 0  # RunInstances answered from an earlier call's ClientToken
    rng: random.Random = field(default_factory=random.Random)
    # EC2's request and resource token buckets (None: unlimited, as moto). Its counters
    # say which calls were answered RequestLimitExceeded, per region and action.
    throttle: Ec2Throttle | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def most_in_any_window(self, seconds: float) -> int:
        times = sorted(self.launched_at)
        return max(
            (sum(1 for t in times if start <= t < start + seconds) for start in times), default=0
        )


@dataclass(frozen=True)
class Answer:
    status: str
    headers: list[tuple[str, str]]
    body: list[bytes]


def throttled_answer() -> Answer:
    """EC2's answer over a limit: HTTP 503 with the RequestLimitExceeded error."""
    return Answer("503 Service Unavailable", [("Content-Type", "text/xml")], [THROTTLED_BODY])


class Ec2Front:
    """WSGI middleware that makes moto behave as EC2 does where the fleet relies on it.

    - Calls are serialised: moto's backends are not thread-safe (a describe racing a
      create_tags fails with "dictionary changed size during iteration").
    - RunInstances honours ClientToken, which moto ignores: a repeated token gets the
      first answer and launches nothing. A worker killed with its launch still in flight
      leaves a request the next run's lookup by tag cannot see yet; on EC2 the token makes
      the next run's launch return that same instance.
    - A share of RunInstances is throttled (`RequestLimitExceeded`), as under load.
    - A terminated instance is forgotten after `forget_terminated_seconds`, as EC2 does
      after about an hour and moto never does."""

    def __init__(self, app: Any, log: LaunchLog) -> None:
        self.app = app
        self.log = log
        self._moto = threading.Lock()
        # moto's state is the process's: a launch still held when its server stops must
        # not land in the next server's cloud.
        self._closed = threading.Event()
        self._by_token: dict[str, Answer] = {}
        self._terminated_at: dict[str, float] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = BytesIO(body)
        form = parse_qs(body.decode(errors="replace"))
        action = form.get("Action", [""])[0]
        if (refused := self._over_limit(environ, action, form)) is not None:
            answer = refused
        elif action == "RunInstances":
            answer = self._delayed_launch(environ, form)
        else:
            with self._moto:
                answer = self._forgetful(action, form, environ)
        start_response(answer.status, answer.headers)
        return answer.body

    def _over_limit(
        self, environ: dict[str, Any], action: str, form: dict[str, list[str]]
    ) -> Answer | None:
        """EC2's throttling answer if the call's token bucket is empty, else None. The
        simulator's own look-ups (signed with INSPECTOR_KEY_ID) are never throttled."""
        throttle = self.log.throttle
        scope = credential_scope(environ.get("HTTP_AUTHORIZATION", ""))
        if throttle is None or scope is None or not action:
            return None
        key_id, region, service = scope
        if service != "ec2" or key_id == INSPECTOR_KEY_ID or throttle.admit(region, action, form):
            return None
        if action == "RunInstances":
            token = form.get("ClientToken", [""])[0]
            subnet = form.get("SubnetId", [None])[0]
            with self.log.lock:
                self.log.throttled += 1
                self.log.calls.append(LaunchCall(time.monotonic(), subnet, token, "throttled"))
        return throttled_answer()

    def _forgetful(
        self, action: str, form: dict[str, list[str]], environ: dict[str, Any]
    ) -> Answer:
        """moto's answer, without the instances EC2 would have forgotten by now."""
        gone = self._forgotten()
        named = [v[0] for k, v in form.items() if k.startswith("InstanceId.")]
        if action in INSTANCE_ACTIONS and (unknown := [i for i in named if i in gone]):
            message = f"The instance ID '{unknown[0]}' does not exist"
            body = error_body("InvalidInstanceID.NotFound", message)
            return Answer("400 Bad Request", [("Content-Type", "text/xml")], [body])
        answer = self._ask_moto(environ)
        if not answer.status.startswith("200"):
            return answer
        if action == "TerminateInstances":
            for instance_id in named:
                self._terminated_at.setdefault(instance_id, time.monotonic())
        if action == "DescribeInstances" and gone:
            return _without_instances(answer, gone)
        return answer

    def _forgotten(self) -> set[str]:
        after = self.log.forget_terminated_seconds
        if after is None:
            return set()
        now = time.monotonic()
        return {i for i, at in self._terminated_at.items() if now - at >= after}

    def _delayed_launch(self, environ: dict[str, Any], form: dict[str, list[str]]) -> Answer:
        with self.log.lock:
            self.log.in_flight += 1
        try:
            self._closed.wait(self.log.launch_delay_seconds)
            with self._moto:
                if self._closed.is_set():
                    return Answer("503 Service Unavailable", [], [b"simulated EC2 stopped"])
                return self._run_instances(environ, form)
        finally:
            with self.log.lock:
                self.log.in_flight -= 1

    def _run_instances(self, environ: dict[str, Any], form: dict[str, list[str]]) -> Answer:
        token = form.get("ClientToken", [""])[0]
        subnet = form.get("SubnetId", [None])[0]
        with self.log.lock:
            answer, outcome = self._before_moto(token, subnet)
            if answer is not None:
                self.log.calls.append(LaunchCall(time.monotonic(), subnet, token, outcome))
                return answer
        count = _fulfilled_count(form, self.log.fulfil_at_most)
        if count is None:
            body = error_body("InsufficientInstanceCapacity", "simulated partial capacity")
            return Answer("400 Bad Request", [("Content-Type", "text/xml")], [body])
        answer = self._ask_moto(_launching(environ, count))
        launched = answer.status.startswith("200")
        outcome = "launched" if launched else "failed"
        with self.log.lock:
            self.log.calls.append(LaunchCall(time.monotonic(), subnet, token, outcome))
            if launched:
                self.log.launched_at.append(time.monotonic())
                self.log.launched_instances += count
                if token:
                    self._by_token[token] = answer
        return answer

    def _before_moto(self, token: str, subnet: str | None) -> tuple[Answer | None, str]:
        """The answer EC2 gives before it launches anything (a replay, a refusal, a
        throttle), or None to launch."""
        log = self.log
        if token in self._by_token:
            log.replayed += 1
            return self._by_token[token], "replayed"
        in_refused = log.refuse_in_subnets is None or subnet in log.refuse_in_subnets
        if log.refuse_with is not None and in_refused:
            log.refused += 1
            body = error_body(log.refuse_with, f"simulated {log.refuse_with}")
            return Answer("400 Bad Request", [("Content-Type", "text/xml")], [body]), "refused"
        if log.rng.random() < log.throttle_rate:
            log.throttled += 1
            answer = Answer("503 Service Unavailable", [("Content-Type", "text/xml")],
                            [THROTTLED_BODY])  # fmt: skip
            return answer, "throttled"
        return None, ""

    def close(self) -> None:
        with self._moto:
            self._closed.set()

    def _ask_moto(self, environ: dict[str, Any]) -> Answer:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            started.extend((status, headers))

        body = list(self.app(environ, start_response))
        return Answer(started[0], started[1], body)


def _fulfilled_count(form: dict[str, list[str]], at_most: int | None) -> int | None:
    """How many instances a RunInstances launches: MaxCount, or fewer (at_most), never
    fewer than MinCount (None: EC2 refuses the call)."""
    low = int(form.get("MinCount", ["1"])[0])
    high = int(form.get("MaxCount", [str(low)])[0])
    count = high if at_most is None else min(high, at_most)
    return count if count >= low else None


def _launching(environ: dict[str, Any], count: int) -> dict[str, Any]:
    """The request with MinCount = MaxCount = count: moto launches MinCount instances
    (EC2 launches up to MaxCount), each with its AmiLaunchIndex."""
    form = parse_qs(environ["wsgi.input"].getvalue().decode(), keep_blank_values=True)
    form["MinCount"] = form["MaxCount"] = [str(count)]
    body = urlencode(form, doseq=True).encode()
    return environ | {"wsgi.input": BytesIO(body), "CONTENT_LENGTH": str(len(body))}


# The calls that name instances, and that EC2 answers InvalidInstanceID.NotFound for an
# instance it has forgotten.
INSTANCE_ACTIONS = frozenset({
    "DescribeInstances", "TerminateInstances", "StartInstances", "StopInstances",
})  # fmt: skip


def _without_instances(answer: Answer, gone: set[str]) -> Answer:
    """A DescribeInstances answer without these instances (and reservations left empty)."""
    root = ElementTree.fromstring(b"".join(answer.body))
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    for reservations in root.iter(f"{ns}reservationSet"):
        for reservation in list(reservations):
            instances = reservation.find(f"{ns}instancesSet")
            if instances is None:
                continue
            for item in list(instances):
                if item.findtext(f"{ns}instanceId") in gone:
                    instances.remove(item)
            if len(instances) == 0:
                reservations.remove(reservation)
    if ns:
        ElementTree.register_namespace("", ns.strip("{}"))
    body = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    headers = [(k, v) for k, v in answer.headers if k.lower() != "content-length"]
    return Answer(answer.status, [*headers, ("Content-Length", str(len(body)))], [body])


class MotoServer:
    # Any keys do: this moto checks no signature and no policy.
    credentials = ("sim", "sim")
    inspector_credentials = (INSPECTOR_KEY_ID, "sim")

    def __init__(self, host: str, port: int, log: LaunchLog) -> None:
        self._front = Ec2Front(DomainDispatcherApplication(create_backend_app), log)
        self._server: BaseWSGIServer = make_server(
            host, port, self._front, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.log = log

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()
        # moto keeps its state per process: a new server starts empty.
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request).close()

    def stop(self) -> None:
        self._front.close()
        self._server.shutdown()
        self._thread.join()
