"""A parameter server's membership in a coordinated job: :class:`ServerMember` registers the
server with the coordinator and sends its heartbeats from a thread of the server's process
(``sparsecore server --coordinator HOST:PORT`` starts one)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from .. import _core
from . import protocol as P

log = logging.getLogger("sparsecore.cluster")

__all__ = ["ServerMember"]


class ServerMember:
    """Server ``server_index`` of ``num_servers``, reachable by workers at ``address``
    ("host:port", what the server advertises), registered with ``coordinator``.
    ``snapshots``: whether the server has a snapshot directory (the coordinator refuses
    servers without one). ``timeout``: deadline of each request to the coordinator.

    ``start()`` registers once on the calling thread: a refusal (wrong index, count or no
    snapshot directory) raises ValueError there; an unreachable coordinator is retried in the
    background. The thread then sends heartbeats, and registers again with a restarted
    coordinator, until ``stop()``."""

    def __init__(self, coordinator: str, *, server_index: int, num_servers: int, address: str,
                 snapshots: bool = True, token: str = "", timeout: float = 10.0):
        P.parse_address(coordinator)
        P.parse_address(address, "server address")
        self.coordinator, self.address = coordinator, address
        self.server_index, self.num_servers, self.snapshots = server_index, num_servers, snapshots
        self.incarnation = P.new_incarnation()
        self._token, self._timeout = token, timeout
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._link = P.Link(coordinator, token, timeout)
        self._interval = 1.0
        self.registered = False

    def _hello(self) -> dict[str, Any]:
        return {"role": "server", "rank": self.server_index, "incarnation": self.incarnation}

    def _register(self) -> None:
        reply = self._link.request(P.REGISTER, dict(self._hello(), address=self.address, num_servers=self.num_servers,
                                                     snapshots=bool(self.snapshots)))
        self._interval = float(reply.get("heartbeat", 1.0))
        self.registered = True
        log.info("server %d registered with the coordinator %s (generation %d)", self.server_index,
                 self.coordinator, reply["generation"])

    def start(self) -> "ServerMember":
        try:
            self._register()
        except P.UNREACHABLE as e:
            log.warning("coordinator %s unreachable (%s); registering in the background", self.coordinator, e)
        self._thread = threading.Thread(target=self._loop, name=f"sparsecore-server-{self.server_index}-member",
                                        daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        silent = False
        while not self._stop.wait(self._interval):
            try:
                if not self.registered:
                    self._register()
                else:
                    self._link.request(P.HEARTBEAT, self._hello())
                if silent:
                    log.info("coordinator %s answers again", self.coordinator)
                silent = False
            except P.UNREACHABLE as e:
                if not silent:
                    log.warning("coordinator %s silent (%s); retrying", self.coordinator, e)
                silent = True
            except KeyError as e:
                if P.is_unknown_member(e):  # a restarted coordinator, or one that found this server silent
                    self.registered = False
                else:
                    log.error("coordinator refused a heartbeat: %s", e)
            except (ValueError, _core.RpcError) as e:
                log.error("coordinator refused server %d: %s", self.server_index, e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._link.close()
