"""EC2 and S3 from moto in server mode, on loopback, with a throttling knob: a share of
RunInstances calls is answered `RequestLimitExceeded` as AWS does under load. Every
launch that gets through is timed, so tests can check the fleet's launch rate limit."""

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
THROTTLED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
    b"<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
    b"</Error></Errors><RequestID>sim-throttle</RequestID></Response>"
)


@dataclass
class LaunchLog:
    """What the simulated EC2 API saw of RunInstances."""

    throttle_rate: float = 0.0
    launched_at: list[float] = field(default_factory=list)
    throttled: int = 0
    rng: random.Random = field(default_factory=random.Random)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def most_in_any_window(self, seconds: float) -> int:
        times = sorted(self.launched_at)
        return max(
            (sum(1 for t in times if start <= t < start + seconds) for start in times), default=0
        )


class ThrottlingApp:
    """WSGI middleware in front of moto. It also serialises the calls: moto's backends are
    not thread-safe (a describe racing a create_tags fails with "dictionary changed size
    during iteration"), and the server answers many workers at once."""

    def __init__(self, app: Any, log: LaunchLog) -> None:
        self.app = app
        self.log = log
        self._moto = threading.Lock()

    def _moto_answer(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        with self._moto:
            return list(self.app(environ, start_response))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = BytesIO(body)
        if parse_qs(body.decode(errors="replace")).get("Action") != ["RunInstances"]:
            return self._moto_answer(environ, start_response)
        with self.log.lock:
            throttle = self.log.rng.random() < self.log.throttle_rate
            if throttle:
                self.log.throttled += 1
            else:
                self.log.launched_at.append(time.monotonic())
        if throttle:
            start_response("503 Service Unavailable", [("Content-Type", "text/xml")])
            return [THROTTLED_BODY]
        return self._moto_answer(environ, start_response)


class MotoServer:
    def __init__(self, host: str, port: int, log: LaunchLog) -> None:
        app = ThrottlingApp(DomainDispatcherApplication(create_backend_app), log)
        self._server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.log = log

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
