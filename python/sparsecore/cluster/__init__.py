"""Coordinated jobs: a coordinator (XDL's scheduler role), its workers and servers, with
barrier snapshots and rollback of the whole cluster when a member fails (docs/cluster.md).

- :class:`Coordinator` (``sparsecore coordinator --servers N --workers M --snapshot-dir D``):
  membership with heartbeats, "not ready" while members are missing, versioned cluster-wide
  snapshots at a step barrier, generations, rollback to the newest complete snapshot.
- :class:`Worker`: ``Worker("host:port", rank=r).run(make_job, steps)`` joins, waits until the
  cluster is ready, trains, snapshots and rolls back with the others.
- :class:`ServerMember` (``sparsecore server --coordinator host:port``): a server's
  registration and heartbeats.
"""

from __future__ import annotations

from .coordinator import Coordinator, main
from .member import ServerMember
from .worker import TrainingJob, Worker

__all__ = ["Coordinator", "ServerMember", "TrainingJob", "Worker", "main"]
