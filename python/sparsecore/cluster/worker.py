"""A worker of a coordinated job: :class:`Worker` joins, waits until the cluster is ready,
trains, stops at the barrier snapshots, and rolls back with the others when a member fails.

The training code is a *job*: an object built by ``make_job(cluster)`` for each generation
(from scratch, so nothing of a rolled-back generation survives) with three methods::

    job.step(step)            # one training step: read a batch, pull, forward/backward, push
    job.state_dict()          # bytes, or a JSON value: dense model, optimizer, reader position
    job.load_state_dict(s)    # what state_dict returned at the snapshot being resumed

Example (synchronous, two workers; servers and the coordinator already running)::

    def make_job(cluster):
        return MyJob(cluster)          # creates its tables on the servers (idempotent)

    sc.cluster.Worker("coord:7100", rank=0, token=token).run(make_job, steps=1000)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Optional, Protocol

from .. import _core
from . import protocol as P

log = logging.getLogger("sparsecore.cluster")

__all__ = ["TrainingJob", "Worker"]


class TrainingJob(Protocol):
    def step(self, step: int) -> None: ...

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def _encode_state(state: Any) -> tuple[bytes, str]:
    if isinstance(state, (bytes, bytearray, memoryview)):
        return bytes(state), "bytes"
    try:
        return json.dumps(state).encode(), "json"
    except (TypeError, ValueError) as e:
        raise TypeError(f"job.state_dict() must return bytes or a JSON-serialisable value: {e}") from None


def _decode_state(data: bytes, encoding: str) -> Any:
    return data if encoding == "bytes" else json.loads(data)


class _Recover(Exception):
    """The generation this worker ran in is over (a member failed or the coordinator moved on)."""


class Worker:
    """Worker ``rank`` of the job coordinated at ``coordinator`` ("host:port").

    ``token``: the cluster's shared token (coordinator and servers). ``timeout``: deadline of
    each call to the servers (``sc.connect(timeout=...)``) and to the coordinator.
    ``recovery_timeout``: the longest this worker waits for the cluster - to become ready, for
    the others at a snapshot barrier, for a coordinator that went away - before it raises
    :class:`sparsecore.RpcTimeoutError`; no wait is unbounded. ``poll``: seconds between
    the worker's questions while it waits. ``mode``/``staleness``: what this worker expects
    of the job (None: whatever the coordinator was started with); a coordinator of another
    mode is refused with ValueError. The worker connects with the coordinator's mode."""

    def __init__(self, coordinator: str, rank: int, *, token: str = "", timeout: float = 60.0,
                 recovery_timeout: float = 600.0, poll: float = 0.02, mode: Optional[str] = None,
                 staleness: Optional[int] = None):
        P.parse_address(coordinator)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
        for name, value in (("timeout", timeout), ("recovery_timeout", recovery_timeout), ("poll", poll)):
            if not 0 < value <= 7 * 24 * 3600:
                raise ValueError(f"{name} must be in (0, 604800] seconds, got {value}")
        if mode is not None and mode not in P.MODES:
            raise ValueError(f"mode must be one of {P.MODES}, got {mode!r}")
        if staleness is not None and (isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0):
            raise ValueError(f"staleness must be an integer >= 0, got {staleness!r}")
        self.coordinator, self.rank = coordinator, rank
        self.mode, self.staleness = mode, staleness
        self.timeout, self.recovery_timeout, self.poll = timeout, recovery_timeout, poll
        self._token = token
        self.incarnation = P.new_incarnation()
        self._link = P.Link(coordinator, token, timeout)
        self._registered = False
        self._job_info: dict[str, Any] = {}
        self.generation: Optional[int] = None  # the generation this worker runs in
        self.recoveries = 0
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None

    def _hello(self) -> dict[str, Any]:
        return {"role": "worker", "rank": self.rank, "incarnation": self.incarnation}

    # --- talking to the coordinator -----------------------------------------------------------
    def _register(self) -> dict[str, Any]:
        reply = self._link.request(P.REGISTER, self._hello())
        mode, staleness = reply.get("mode"), int(reply.get("staleness", 0))
        wanted_mode = "sync" if self.mode == "ssp" and self.staleness == 0 else self.mode
        if (wanted_mode is not None and wanted_mode != mode) or (self.staleness is not None
                                                                 and mode == "ssp" and self.staleness != staleness):
            raise ValueError(f"worker {self.rank} was started for mode {self.mode!r} (staleness {self.staleness}); "
                             f"the coordinator {self.coordinator} runs mode {mode!r} (staleness {staleness})")
        self._registered = True
        self._job_info = reply
        return reply

    def _ask(self, method: int, message: dict[str, Any], deadline: float, what: str) -> dict[str, Any]:
        """One request, registering first when the coordinator does not know this process,
        and retried while the coordinator is unreachable, until ``deadline``."""
        while True:
            try:
                if not self._registered:
                    self._register()
                return self._link.request(method, dict(self._hello(), **message))
            except P.UNREACHABLE as e:
                log.debug("coordinator unreachable (%s); retrying", e)
                P.sleep_until(deadline, max(self.poll, 0.1), what, self.recovery_timeout)
            except KeyError as e:
                if not P.is_unknown_member(e):
                    raise
                self._registered = False

    def _heartbeat_loop(self) -> None:
        link = P.Link(self.coordinator, self._token, self.timeout)
        interval = float(self._job_info.get("heartbeat", 1.0))
        silent_since: Optional[float] = None
        while not self._stop.wait(interval):
            try:
                link.request(P.HEARTBEAT, self._hello())
                silent_since = None
            except P.UNREACHABLE:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > float(self._job_info.get("member_timeout", 10.0)):
                    log.warning("worker %d: coordinator %s silent; the next step boundary waits for it",
                                self.rank, self.coordinator)
                    silent_since = time.monotonic()
            except (KeyError, ValueError, _core.RpcError):
                pass  # not registered (yet) with a restarted coordinator: the main thread re-registers

    def status(self) -> dict[str, Any]:
        """The coordinator's view of the cluster (generation, phase, members, newest snapshot)."""
        return self._link.request(P.STATUS, {})

    # --- the run ------------------------------------------------------------------------------------
    def run(self, make_job: Callable[[Any], TrainingJob], steps: int) -> int:
        """Trains ``steps`` steps (0 .. steps - 1) as worker ``rank``: every generation builds
        ``make_job(cluster)`` over the servers the coordinator names (synchronous pushes in
        "sync" mode), loads the snapshot's state into it when resuming, and calls
        ``job.step(step)`` for each step, ``job.state_dict()`` at each snapshot barrier. A
        failed call to the servers (:class:`sparsecore.RpcError`) or a new generation makes it
        roll back with the others. Returns once the job's final snapshot is complete (every
        worker finished); raises :class:`sparsecore.RpcTimeoutError` past ``recovery_timeout``
        without progress. Errors of the job's own code propagate."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        self._ask(P.STATUS, {}, time.monotonic() + self.recovery_timeout, "registering with the coordinator")
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name=f"sparsecore-worker-{self.rank}-heartbeat",
                                           daemon=True)
        self._heartbeat.start()
        try:
            while True:
                ready = self._await_ready()
                if ready["phase"] == "done":
                    return steps
                try:
                    if self._generation(ready, make_job, steps) == "done":
                        return steps
                    why = "generation ended"
                except _Recover as e:
                    why = str(e)
                self.recoveries += 1
                self._report_failure(why)
        finally:
            self._stop.set()
            self._heartbeat.join()
            self._link.close()

    def _generation(self, ready: dict[str, Any], make_job: Callable[[Any], TrainingJob], steps: int) -> str:
        from ..server import connect

        self.generation = ready["generation"]
        servers = [ready["servers"][str(i)] for i in range(ready["num_servers"])]
        mode = ready["mode"]
        stepping = mode != "async"  # sync and ssp name every worker; async pushes alone
        try:  # a server gone meanwhile; errors of the job's own code propagate
            cluster = connect(servers, token=self._token, timeout=self.timeout, mode=mode,
                              staleness=int(ready.get("staleness", 0)) if mode == "ssp" else 0,
                              worker=self.rank if stepping else 0,
                              num_workers=ready["num_workers"] if stepping else 0)
        except _core.RpcError as e:
            raise _Recover(f"joining generation {self.generation}: {type(e).__name__}: {e}") from None
        try:
            return self._run_generation(cluster, make_job, ready.get("resume"), steps)
        except _Recover:
            # The job may outlive its generation (a caller keeps it): its connections end
            # here, so the servers count this worker gone now and the others' calls waiting
            # for its step abort at once rather than at their deadline, which would hold off
            # the roll-back (the coordinator restores once every worker paused).
            cluster.close()
            raise

    def _run_generation(self, cluster: Any, make_job: Callable[[Any], TrainingJob], resume: Optional[dict[str, Any]],
                        steps: int) -> str:
        try:
            job = make_job(cluster)
        except _core.RpcError as e:
            raise _Recover(f"joining generation {self.generation}: {type(e).__name__}: {e}") from None
        step = 0
        if resume is not None:
            try:  # the coordinator gone, or the generation already over
                reply = self._link.call(P.FETCH_STATE, P.encode(dict(self._hello(), name=resume["name"])))
                header, data = P.unpack_with_state(reply, "snapshot state")
            except (_core.RpcError, KeyError, ValueError) as e:
                raise _Recover(f"fetching the state of {resume['name']}: {type(e).__name__}: {e}") from None
            job.load_state_dict(_decode_state(data, header["encoding"]))
            step = int(header["step"])
        log.info("worker %d: generation %d from step %d", self.rank, self.generation, step)
        return self._train(job, step, steps)

    def _train(self, job: TrainingJob, step: int, steps: int) -> str:
        waiting_since: Optional[float] = None
        while True:
            final = step >= steps
            try:
                reply = self._link.request(P.BOUNDARY, dict(self._hello(), generation=self.generation, step=step,
                                                            final=final))
            except P.UNREACHABLE as e:
                raise _Recover(f"coordinator unreachable: {e}") from None
            except KeyError as e:
                if not P.is_unknown_member(e):
                    raise
                self._registered = False
                raise _Recover("the coordinator restarted") from None
            action = reply["action"]
            if action == "run" and not final:
                waiting_since = None
                try:
                    job.step(step)
                except _core.RpcError as e:
                    raise _Recover(f"step {step}: {type(e).__name__}: {e}") from None
                step += 1
            elif action == "run":
                raise RuntimeError(f"worker {self.rank} finished its {steps} steps where another worker goes on: "
                                   "every worker of a job must run the same number of steps")
            elif action == "snapshot":
                data, encoding = _encode_state(job.state_dict())
                limit = int(self._job_info.get("max_state_bytes", P.DEFAULT_MAX_STATE_BYTES))
                if len(data) > limit:
                    raise ValueError(f"job.state_dict() is {len(data)} bytes, more than the coordinator takes "
                                     f"(--max-state-bytes {limit})")
                header = dict(self._hello(), generation=self.generation, step=step, encoding=encoding)
                try:
                    self._link.call(P.SNAPSHOT_STATE, P.pack_with_state(header, data))
                except (ValueError, KeyError, *P.UNREACHABLE) as e:  # the barrier is gone: ask again
                    log.debug("worker %d: state for step %d not taken: %s", self.rank, step, e)
                waiting_since = time.monotonic()
            elif action == "wait":
                waiting_since = waiting_since or time.monotonic()
                P.sleep_until(waiting_since + self.recovery_timeout, self.poll,
                              f"worker {self.rank} waiting at the snapshot barrier of step {step}", self.recovery_timeout)
            elif action == "done":
                return "done"
            elif action == "failed":
                raise RuntimeError(f"the job failed: {reply.get('why', '')}")
            else:
                raise _Recover(f"generation {reply['generation']} began")

    def _report_failure(self, why: str) -> None:
        log.warning("worker %d: rolling back (%s)", self.rank, why)
        deadline = time.monotonic() + self.recovery_timeout
        self._ask(P.FAILED, {"generation": self.generation if self.generation is not None else -1, "why": why[:500]},
                  deadline, f"worker {self.rank} reporting a failure")

    def _await_ready(self) -> dict[str, Any]:
        """Waits (bounded) until the cluster is ready in a generation other than the one this
        worker ran in, telling the coordinator meanwhile that it paused."""
        deadline = time.monotonic() + self.recovery_timeout
        what = f"worker {self.rank} waiting for the cluster to be ready"
        paused = -1
        while True:
            reply = self._ask(P.HEARTBEAT, {"paused": paused}, deadline, what)
            if reply["phase"] == "done":
                return reply
            if reply["phase"] == "failed":
                raise RuntimeError(f"the job failed: {reply.get('why', '')}")
            if reply["phase"] == "ready" and reply["generation"] != self.generation:
                return reply
            paused = reply["generation"]
            P.sleep_until(deadline, self.poll, f"{what} ({reply.get('why', '')})", self.recovery_timeout)
