"""A cap on request bodies, enforced before routing, authentication and parsing.

Pure ASGI, outside everything that reads the body: a declared Content-Length above the cap
is answered 413 at once, and a body sent without one (chunked) is counted as it arrives and
answered 413 as soon as it passes the cap. What is read is held (at most the cap) and
replayed to the app, so no route ever parses more than the cap.
"""

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PROBLEM_TYPE, Problem, problem_response

CONTENT_LENGTH: Final = b"content-length"


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(CONTENT_LENGTH, b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        first = await self._read(receive)
        if first is None:
            await self._refuse(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return first

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> Message | None:
        """The whole body as one message, or None once it passes the cap."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message  # the client went away: the app sees that
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = Problem(
            type=PROBLEM_TYPE + "body-too-large",
            title="Request body too large",
            status=413,
            detail=f"the request body is larger than {self.max_bytes} bytes",
        )
        # The rest of the body is not read: the connection cannot be reused.
        response = problem_response(problem, {"Connection": "close"})
        await response(scope, receive, send)
