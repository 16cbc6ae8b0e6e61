"""Keeps a step's lease alive while its handler runs, from a background thread."""

import threading
from types import TracebackType

import structlog
from sqlalchemy import Engine

from models.queries import query

log = structlog.get_logger()


class LeaseKeeper:
    def __init__(self, engine: Engine, node_id: int, worker: str, lease_seconds: float) -> None:
        self._engine = engine
        self._node_id = node_id
        self._worker = worker
        self._lease_seconds = lease_seconds
        self._stopped = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, daemon=True)

    def held(self) -> bool:
        return not self._lost.is_set()

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join()

    def _renew_until_stopped(self) -> None:
        while not self._stopped.wait(self._lease_seconds / 3):
            try:
                renewed = self._renew()
            except Exception as exc:  # noqa: BLE001  # a database blip must not kill the step
                log.warning("lease renewal failed", node_id=self._node_id, error=str(exc))
                continue
            if not renewed:
                log.warning("lease lost", node_id=self._node_id)
                self._lost.set()
                return

    def _renew(self) -> bool:
        params: dict[str, object] = {
            "node_id": self._node_id,
            "worker": self._worker,
            "lease_seconds": self._lease_seconds,
        }
        with self._engine.connect() as connection:
            return connection.execute(query("renew_lease"), params).first() is not None
