"""The coordinator (XDL's scheduler): membership, readiness, barrier snapshots, rollback.

One coordinator process per job (``sparsecore coordinator``, or :class:`Coordinator` in a
process of the launcher's choosing). Servers (``sparsecore server --coordinator``) and workers
(:class:`sparsecore.cluster.Worker`) register with it and send heartbeats; a member silent
past ``member_timeout`` is dead. Each reply to a member's request is the coordinator's side
of the heartbeat: a member that gets none within its deadline knows the coordinator is gone.

Generations: the cluster runs in generation g. Whatever changes the membership - a member
found dead, a restarted or replacement member registering, a worker reporting a failed step,
the coordinator itself restarting - starts generation g + 1, "not ready": workers stop at
their next step boundary (or at the failed call) and report that they paused; once every
server and worker is present and every worker paused, the coordinator restores every server
from the newest complete cluster snapshot and declares the generation ready, and each worker
loads its own state (dense model, optimizer, reader position) from that snapshot and resumes
at its step. Batches after the snapshot are therefore applied exactly once; in synchronous
mode the run is bit for bit the uninterrupted run from that snapshot.

Snapshots are taken at a step barrier: workers ask the coordinator at every step boundary
(one small request) whether to run the step or snapshot first; the answer for a step is
decided once, so every worker stops at the same step. The coordinator then saves every server
(``Cluster.save``), writes every worker's state beside its manifest (snapshots.py) and lets the
workers go on. A snapshot is taken at the first boundary of a job (so that there is always one
to roll back to), every ``snapshot_every_steps`` steps and/or ``snapshot_every_seconds``, and at
the end (the final snapshot, after which the job is done).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

from .. import _core
from . import protocol as P
from .snapshots import SERIES_PREFIX, SnapshotStore, snapshot_name

log = logging.getLogger("sparsecore.cluster")

# Snapshots that fail in a row (each rolls the cluster back) before the job is declared failed
# instead of retried for ever: a save that keeps failing is not a member that will come back.
MAX_SAVE_FAILURES = 3


@dataclasses.dataclass
class _Member:
    incarnation: str
    last_seen: float
    address: str = ""
    paused: int = -1  # the generation this worker said it paused in
    step: int = 0
    told_done: bool = False
    answered: float = 0.0  # a server: when it last answered the coordinator's ping


@dataclasses.dataclass
class _Pending:
    step: int
    final: bool
    states: dict[int, tuple[bytes, str]] = dataclasses.field(default_factory=dict)
    committing: bool = False


class Coordinator:
    """See the module docstring. ``start()`` listens; ``wait()`` returns once the job is done
    (every worker finished and the final snapshot is complete); ``stop()`` ends it.

    ``num_servers``/``num_workers``: the members the job needs. ``snapshot_dir``: this
    coordinator's record of the job (a restarted coordinator continues from it; one directory
    per job). ``mode``: "sync" (workers' pushes synchronous), "async", or "ssp" (bounded
    staleness: a worker at most ``staleness`` steps ahead of the slowest; 0 is "sync"), what
    every worker connects with (:func:`sparsecore.connect`). ``heartbeat``:
    seconds between members' heartbeats; ``member_timeout``: silence after which a member is
    dead. ``restore_timeout``: deadline of each call to the servers (save, restore).
    ``keep``: complete snapshots kept in ``snapshot_dir``; after each snapshot the servers
    remove theirs beyond the same newest ``keep`` (:meth:`Cluster.prune_snapshots`, never one
    this directory still holds). ``max_state_bytes``: largest worker state accepted (frames above it
    are refused by the transport)."""

    def __init__(self, *, num_servers: int, num_workers: int, snapshot_dir: str, port: int = 0,
                 address: str = "127.0.0.1", token: str = "", mode: str = "sync", staleness: int = 0,
                 snapshot_every_steps: int = 0, snapshot_every_seconds: float = 0.0,
                 heartbeat: float = 1.0, member_timeout: float = 10.0, restore_timeout: float = 120.0,
                 keep: int = 3, max_state_bytes: int = P.DEFAULT_MAX_STATE_BYTES):
        mode = self.check_options(num_servers=num_servers, num_workers=num_workers, mode=mode, staleness=staleness,
                                  snapshot_every_steps=snapshot_every_steps,
                                  snapshot_every_seconds=snapshot_every_seconds, heartbeat=heartbeat,
                                  member_timeout=member_timeout, keep=keep, max_state_bytes=max_state_bytes)
        self.num_servers, self.num_workers, self.mode, self.staleness = num_servers, num_workers, mode, staleness
        self.every_steps, self.every_seconds = int(snapshot_every_steps), float(snapshot_every_seconds)
        self.heartbeat, self.member_timeout, self.restore_timeout = heartbeat, member_timeout, restore_timeout
        self.keep = keep
        self.max_state_bytes = int(max_state_bytes)
        self._token = token
        self._store = SnapshotStore(snapshot_dir)
        record = self._store.load_record()
        self._latest = self._store.latest()
        self._next_seq = max([record.get("next_seq", 1)] + [d["seq"] + 1 for d in self._store.complete()])
        self._done = bool(record.get("done"))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._servers: dict[int, _Member] = {}
        self._workers: dict[int, _Member] = {}
        self._gen = int(record.get("generation", 0)) + 1  # a restarted coordinator starts anew
        self._phase = "done" if self._done else "waiting"
        self._why = "coordinator started"
        self._resume: Optional[dict[str, Any]] = None
        self._decisions: dict[int, str] = {}
        self._pending: Optional[_Pending] = None
        self._last_snapshot_time = time.monotonic()
        self._snapshots_this_gen = 0
        self._save_failures = 0  # consecutive; MAX_SAVE_FAILURES of them end the job
        self._done_at = time.monotonic()
        self._persist()
        self._rpc = _core.RpcServer(address, port, 1, token, max_frame_bytes=int(max_state_bytes) + P.MAX_HEADER_BYTES,
                                    memory_budget_bytes=max(1 << 30, 2 * int(max_state_bytes)))
        handlers = {P.REGISTER: self._on_register, P.HEARTBEAT: self._on_heartbeat, P.BOUNDARY: self._on_boundary,
                    P.SNAPSHOT_STATE: self._on_snapshot_state, P.FETCH_STATE: self._on_fetch_state,
                    P.FAILED: self._on_failed, P.STATUS: self._on_status}
        for method, handler in handlers.items():
            self._rpc.register(method, handler)
        self.address = address
        self._thread: Optional[threading.Thread] = None
        self._prober: Optional[threading.Thread] = None

    @staticmethod
    def check_options(*, num_servers: int, num_workers: int, mode: str = "sync", staleness: int = 0,
                      snapshot_every_steps: int = 0, snapshot_every_seconds: float = 0.0, heartbeat: float = 1.0,
                      member_timeout: float = 10.0, keep: int = 3, max_state_bytes: int = P.DEFAULT_MAX_STATE_BYTES,
                      **_: Any) -> str:
        """ValueError for options a coordinator refuses (so a launcher can refuse them before
        it starts anything); the mode it runs ("ssp" with staleness 0 is "sync")."""
        for name, value in (("num_servers", num_servers), ("num_workers", num_workers)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _core_max_workers():
                raise ValueError(f"{name} must be an integer in [1, {_core_max_workers()}], got {value!r}")
        if mode not in P.MODES:
            raise ValueError(f"mode must be one of {P.MODES}, got {mode!r}")
        if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0 or (
                staleness and mode != "ssp"):
            raise ValueError(f"staleness must be an integer >= 0, and only with mode 'ssp'; got {staleness!r} "
                             f"with mode {mode!r}")
        if snapshot_every_steps < 0 or snapshot_every_seconds < 0:
            raise ValueError("snapshot_every_steps and snapshot_every_seconds must be >= 0")
        if not 0 < heartbeat < member_timeout:
            raise ValueError(f"need 0 < heartbeat < member_timeout, got {heartbeat} and {member_timeout}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if not 1 << 10 <= max_state_bytes <= 1 << 31:
            raise ValueError(f"max_state_bytes must be in [1 KiB, 2 GiB], got {max_state_bytes}")
        # No step ahead is the synchronous mode, as sparsecore.connect takes it.
        return "sync" if mode == "ssp" and staleness == 0 else mode

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._rpc.port

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> "Coordinator":
        self._rpc.start()
        self._thread = threading.Thread(target=self._control_loop, name="sparsecore-coordinator", daemon=True)
        self._thread.start()
        self._prober = threading.Thread(target=self._probe_loop, name="sparsecore-coordinator-probe", daemon=True)
        self._prober.start()
        log.info("coordinator on %s, generation %d, newest snapshot %s", self.endpoint, self._gen,
                 self._latest["name"] if self._latest else "none")
        return self

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once the job is over - done, or failed (:attr:`failed` says why) - and every
        worker was told (or one member timeout after that), False at ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped.is_set():
            with self._lock:
                if self._phase in ("done", "failed") and (all(w.told_done for w in self._workers.values())
                                              and len(self._workers) == self.num_workers
                                              or time.monotonic() - self._done_at > self.member_timeout):
                    return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._stopped.wait(0.05)
        return False

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        for thread in (self._thread, self._prober):
            if thread is not None:
                thread.join()
        self._rpc.stop()

    @property
    def failed(self) -> Optional[str]:
        """Why the job failed (snapshots that cannot be written), or None."""
        with self._lock:
            return self._why if self._phase == "failed" else None

    def status(self) -> dict[str, Any]:
        """The cluster's state: generation, phase ("waiting", "restoring", "ready", "done"),
        why it is not ready, members, the newest complete snapshot and the workers' steps."""
        with self._lock:
            return self._status_locked()

    # --- state changes (lock held) -----------------------------------------------------------
    def _status_locked(self) -> dict[str, Any]:
        why = (self._missing_locked() or self._why) if self._phase == "waiting" else self._why
        return {"generation": self._gen, "phase": self._phase, "why": why, "mode": self.mode,
                "staleness": self.staleness,
                "num_servers": self.num_servers, "num_workers": self.num_workers,
                "servers": {str(i): m.address for i, m in sorted(self._servers.items())},
                "workers": {str(r): m.step for r, m in sorted(self._workers.items())},
                "snapshot": self._latest["name"] if self._latest else None,
                "snapshot_step": self._latest["step"] if self._latest else None,
                "snapshots_taken": self._snapshots_this_gen, "heartbeat": self.heartbeat,
                "member_timeout": self.member_timeout, "max_state_bytes": self.max_state_bytes}

    def _persist(self) -> None:
        self._store.save_record({"generation": self._gen, "next_seq": self._next_seq, "done": self._done,
                                 "num_servers": self.num_servers, "num_workers": self.num_workers,
                                 "mode": self.mode})

    def _new_generation(self, why: str) -> None:
        if self._phase in ("done", "failed"):
            return
        self._gen += 1
        self._phase = "waiting"
        self._why = why
        self._decisions.clear()
        self._pending = None
        self._resume = None
        self._persist()
        log.warning("generation %d: %s; rolling back to %s", self._gen, why,
                    self._latest["name"] if self._latest else "the start")

    def _member(self, message: dict[str, Any], role: Optional[str] = None) -> _Member:
        role = role or P.field(message, "role", str)
        rank = P.field(message, "rank", int)
        incarnation = P.field(message, "incarnation", str)
        members = self._servers if role == "server" else self._workers if role == "worker" else None
        if members is None:
            raise ValueError(f"role must be one of {P.ROLES}, got {role!r}"[:200])
        member = members.get(rank)
        if member is None or member.incarnation != incarnation:
            raise KeyError(f"unknown member: {role} {rank} is not registered with this incarnation")
        member.last_seen = time.monotonic()
        return member

    # --- handlers (reactor thread) -------------------------------------------------------------
    def _on_register(self, payload: bytes) -> bytes:
        m = P.decode(payload)
        role = P.field(m, "role", str)
        rank = P.field(m, "rank", int)
        incarnation = P.field(m, "incarnation", str)
        if not 0 < len(incarnation) <= 64:
            raise ValueError("incarnation must be 1 to 64 characters")
        if role == "server":
            if not 0 <= rank < self.num_servers:
                raise ValueError(f"server index {rank} is outside [0, {self.num_servers})")
            if P.field(m, "num_servers", int) != self.num_servers:
                raise ValueError(f"server {rank} was started with --num-servers {m['num_servers']}, "
                                 f"this job has {self.num_servers}")
            if not P.field(m, "snapshots", bool):
                raise ValueError(f"server {rank} has no --snapshot-dir; the coordinator needs one on every server")
            address = P.field(m, "address", str)
            P.parse_address(address, "server address")
            members = self._servers
        elif role == "worker":
            if not 0 <= rank < self.num_workers:
                raise ValueError(f"worker rank {rank} is outside [0, {self.num_workers})")
            address = ""
            members = self._workers
        else:
            raise ValueError(f"role must be one of {P.ROLES}, got {role!r}"[:200])
        with self._lock:
            old = members.get(rank)
            if old is None or old.incarnation != incarnation:
                if old is not None or self._phase in ("ready", "restoring"):
                    self._new_generation(f"{role} {rank} joined" + (" again (restarted or replaced)" if old else ""))
                members[rank] = _Member(incarnation, time.monotonic(), address, answered=time.monotonic())
                log.info("%s %d registered%s", role, rank, f" at {address}" if address else "")
            member = members[rank]
            member.last_seen = time.monotonic()
            if role == "worker":
                member.paused = self._gen  # a registering worker has not touched the servers
            self._wake.set()
            reply = self._status_locked()
        return P.encode(reply)

    def _on_heartbeat(self, payload: bytes) -> bytes:
        m = P.decode(payload)
        with self._lock:
            member = self._member(m)
            paused = m.get("paused")
            if isinstance(paused, int) and not isinstance(paused, bool) and paused == self._gen:
                member.paused = paused
                self._wake.set()
            reply = self._status_locked()
            if self._phase == "ready" and self._resume is not None and m.get("role") == "worker":
                reply["resume"] = {"name": self._resume["name"], "step": self._resume["step"]}
        return P.encode(reply)

    def _on_failed(self, payload: bytes) -> bytes:
        m = P.decode(payload)
        with self._lock:
            self._member(m, "worker")
            gen = P.field(m, "generation", int)
            if gen == self._gen and self._phase == "ready":
                self._new_generation(f"worker {m['rank']} failed: {str(m.get('why', ''))[:200]}")
            self._wake.set()
            return P.encode({"generation": self._gen})

    def _on_status(self, payload: bytes) -> bytes:
        return P.encode(self.status())

    def _on_boundary(self, payload: bytes) -> bytes:
        m = P.decode(payload)
        step = P.field(m, "step", int)
        final = bool(P.field(m, "final", bool))
        gen = P.field(m, "generation", int)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        with self._lock:
            member = self._member(m, "worker")
            member.step = step
            if self._phase in ("done", "failed"):
                member.told_done = True
                return P.encode({"action": self._phase, "generation": self._gen, "why": self._why})
            if gen != self._gen or self._phase != "ready":
                return P.encode({"action": "recover", "generation": self._gen})
            decision = self._decisions.get(step)
            if decision is None:
                decision = self._decide(step, final)
                self._decisions[step] = decision
            if decision == "snapshot":
                pending = self._pending
                if pending is None or pending.step != step:  # a snapshot lost to a failed save
                    return P.encode({"action": "recover", "generation": self._gen})
                action = "wait" if m["rank"] in pending.states else "snapshot"
            elif decision == "saved" and final:
                action = "done"
            else:
                action = "run"
            return P.encode({"action": action, "generation": self._gen})

    def _decide(self, step: int, final: bool) -> str:
        """Whether boundary ``step`` (first asked now) is a snapshot barrier."""
        newest = max(self._decisions, default=-1)
        resumed_here = self._resume is not None and self._resume["step"] == step
        due = (final or (self._resume is None and self._snapshots_this_gen == 0)
               or (step > newest and not resumed_here
                   and ((self.every_steps and step % self.every_steps == 0)
                        or (self.every_seconds and time.monotonic() - self._last_snapshot_time >= self.every_seconds))))
        if not due:
            return "run"
        self._pending = _Pending(step, final)
        for s in [s for s in self._decisions if s < step - 1]:
            del self._decisions[s]
        return "snapshot"

    def _on_snapshot_state(self, payload: bytes) -> bytes:
        header, state = P.unpack_with_state(payload)
        encoding = P.field(header, "encoding", str)
        if encoding not in ("bytes", "json"):
            raise ValueError(f"state encoding must be 'bytes' or 'json', got {encoding!r}"[:200])
        with self._lock:
            self._member(header, "worker")
            step = P.field(header, "step", int)
            pending = self._pending
            if P.field(header, "generation", int) != self._gen or pending is None or pending.step != step:
                raise ValueError(f"no snapshot is pending at step {step} in generation {header['generation']}")
            pending.states[header["rank"]] = (state, encoding)
            self._wake.set()
        return P.encode({})

    def _on_fetch_state(self, payload: bytes) -> bytes:
        m = P.decode(payload)
        with self._lock:
            self._member(m, "worker")
            name = P.field(m, "name", str)
            if self._resume is None or self._resume["name"] != name:
                raise ValueError(f"snapshot '{name}'"[:200] + " is not the one this generation resumes from")
            manifest = self._resume
        state, encoding = self._store.read_state(manifest, m["rank"])
        return P.pack_with_state({"encoding": encoding, "step": manifest["step"]}, state)

    # --- the control thread ----------------------------------------------------------------------
    def _control_loop(self) -> None:
        retry_at = 0.0
        while not self._stopped.is_set():
            self._wake.wait(min(0.05, self.heartbeat / 4))
            self._wake.clear()
            job: Optional[tuple[str, int, Any, list[str]]] = None
            with self._lock:
                now = time.monotonic()
                if self._phase not in ("done", "failed"):
                    for role, members in (("server", self._servers), ("worker", self._workers)):
                        for rank, member in list(members.items()):
                            if now - member.last_seen > self.member_timeout:
                                del members[rank]
                                self._new_generation(f"{role} {rank} silent for {self.member_timeout:g} s")
                            elif role == "server" and now - member.answered > self.member_timeout:
                                del members[rank]
                                self._new_generation(f"server {rank} at {member.address} has not answered a ping "
                                                     f"for {self.member_timeout:g} s")
                if self._phase == "waiting" and now >= retry_at:
                    missing = self._missing_locked()
                    if missing:
                        self._why = missing
                    else:
                        self._phase = "restoring"
                        job = ("restore", self._gen, self._latest, self._addresses_locked())
                elif (self._phase == "ready" and self._pending is not None and not self._pending.committing
                      and len(self._pending.states) == self.num_workers):
                    self._pending.committing = True
                    job = ("save", self._gen, self._pending, self._addresses_locked())
            if job is None:
                continue
            kind, gen, what, addresses = job
            try:
                if kind == "restore":
                    self._restore(gen, what, addresses)
                else:
                    self._save(gen, what, addresses)
            except Exception as e:  # a server gone meanwhile: roll back and try again
                log.warning("%s failed in generation %d: %s: %s", kind, gen, type(e).__name__, e)
                with self._lock:
                    retry_at = time.monotonic() + min(1.0, self.heartbeat)
                    if self._gen == gen and self._phase not in ("done", "failed"):
                        if kind == "restore":
                            self._phase, self._why = "waiting", f"restore failed: {e}"
                        else:
                            if not isinstance(e, P.UNREACHABLE):  # not a server gone: a save that cannot work
                                self._save_failures += 1
                            self._new_generation(f"snapshot at step {what.step} failed: {e}")
                            if self._save_failures >= MAX_SAVE_FAILURES:
                                self._phase, self._why = "failed", f"{self._save_failures} snapshots failed in a row: {e}"
                                self._done_at = time.monotonic()
                                log.error("job failed: %s", self._why)

    def _probe_loop(self) -> None:
        """The coordinator's side of the servers' heartbeats: every heartbeat it pings each
        registered server on its RPC port (the port workers use), so that a server process whose
        registration thread still runs but whose shards do not answer is found dead too."""
        clients: dict[tuple[int, str], Any] = {}
        while not self._stopped.wait(self.heartbeat):
            with self._lock:
                servers = [(i, m.incarnation, m.address) for i, m in self._servers.items()]
            for key in [k for k in clients if k not in {(i, inc) for i, inc, _ in servers}]:
                del clients[key]
            for index, incarnation, address in servers:
                try:
                    client = clients.get((index, incarnation))
                    if client is None:
                        host, port = P.parse_address(address, "server address")
                        client = clients[(index, incarnation)] = _core.RpcClient(
                            host, port, token=self._token, connect_timeout_ms=int(self.member_timeout * 500),
                            timeout_ms=int(self.member_timeout * 500))
                    client.ping(int(self.member_timeout * 500))
                except _core.RpcAuthError as e:
                    log.error("server %d at %s refuses the coordinator's token: %s", index, address, e)
                    continue
                except _core.RpcError:
                    clients.pop((index, incarnation), None)
                    continue
                with self._lock:
                    member = self._servers.get(index)
                    if member is not None and member.incarnation == incarnation:
                        member.answered = time.monotonic()

    def _missing_locked(self) -> str:
        servers = [i for i in range(self.num_servers) if i not in self._servers]
        workers = [r for r in range(self.num_workers) if r not in self._workers]
        if servers or workers:
            return "waiting for " + ", ".join([f"server {i}" for i in servers] + [f"worker {r}" for r in workers])
        running = [r for r, w in self._workers.items() if w.paused != self._gen]
        if running:
            return "waiting for workers to pause: " + ", ".join(map(str, running))
        return ""

    def _addresses_locked(self) -> list[str]:
        return [self._servers[i].address for i in range(self.num_servers)]

    def _servers_client(self, addresses: list[str]) -> Any:
        from ..server import connect

        return connect(addresses, token=self._token, timeout=self.restore_timeout, heartbeat=self.member_timeout)

    def _restore(self, gen: int, latest: Optional[dict[str, Any]], addresses: list[str]) -> None:
        client = self._servers_client(addresses)  # also proves every server answers
        if latest is not None:
            client.restore(latest["name"])
        del client
        with self._lock:
            if self._gen != gen:
                return
            self._phase, self._why = "ready", ""
            self._resume = latest
            self._snapshots_this_gen = 0
            self._last_snapshot_time = time.monotonic()
        log.info("generation %d ready from %s", gen, latest["name"] if latest else "the start")

    def _save(self, gen: int, pending: _Pending, addresses: list[str]) -> None:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._persist()
        name = snapshot_name(seq, pending.step)
        client = self._servers_client(addresses)
        client.save(name, step=pending.step)
        manifest = self._store.write(name, {"seq": seq, "step": pending.step, "final": pending.final,
                                            "generation": gen, "mode": self.mode, "num_servers": self.num_servers,
                                            "num_workers": self.num_workers}, pending.states)
        # Old snapshots go before this one is announced: once the job is done, only the kept
        # ones remain, here and on the servers.
        self._store.prune(self.keep)
        self._prune_servers(client)
        del client
        with self._lock:
            self._latest = manifest
            self._save_failures = 0
            self._snapshots_this_gen += 1
            self._last_snapshot_time = time.monotonic()
            if self._pending is pending:
                self._pending = None
                self._decisions[pending.step] = "saved"
                if pending.final and self._gen == gen:
                    self._done, self._phase, self._why = True, "done", "job finished"
                    self._done_at = time.monotonic()
            self._persist()
        log.info("snapshot %s complete (step %d)", name, pending.step)

    def _prune_servers(self, client: Any) -> None:
        """The servers keep the same cluster snapshots as this directory: their newest ``keep``
        and every one this directory still holds whole (which may be older, when a newer save
        reached the servers but not this manifest). A failure only leaves old snapshots."""
        kept = [doc["name"] for doc in self._store.complete()]
        try:
            removed = client.prune_snapshots(self.keep, prefix=SERIES_PREFIX, protect=kept)
        except (_core.RpcError, ValueError, KeyError, OSError) as e:
            log.warning("could not prune the servers' snapshots: %s", e)
            return
        if removed:
            log.info("servers removed snapshots %s", ", ".join(removed))


def _core_max_workers() -> int:
    return 1 << 16


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``sparsecore coordinator``: coordinate one job until it is done (exit 0) or SIGTERM/SIGINT."""
    from .._token import ENV_VAR, resolve_token

    p = argparse.ArgumentParser(
        prog="sparsecore coordinator",
        description="Coordinate one job of parameter servers and workers: membership with heartbeats, barrier "
                    "snapshots, and rollback of the whole cluster to the newest complete snapshot when a member "
                    "fails. Prints 'coordinator on HOST:PORT' once members can register; exits 0 once the job is "
                    "done (every worker finished, final snapshot complete).",
        epilog=f"The shared token: --token-file PATH or ${ENV_VAR} (the servers' token). Servers join with "
               "'sparsecore server --coordinator HOST:PORT --snapshot-dir DIR ...', workers with "
               "sparsecore.cluster.Worker('HOST:PORT', rank=...).")
    p.add_argument("--address", default="127.0.0.1", metavar="HOST",
                   help="bind address (default: 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=0, metavar="N", help="TCP port (default: 0, any free port)")
    p.add_argument("--servers", type=int, required=True, metavar="N", help="parameter servers of the job")
    p.add_argument("--workers", type=int, required=True, metavar="M", help="workers of the job")
    p.add_argument("--snapshot-dir", required=True, metavar="DIR",
                   help="the coordinator's record of the job: generation and cluster snapshots (workers' states "
                        "and manifests); a restarted coordinator continues from it. One directory per job")
    p.add_argument("--mode", choices=P.MODES, default="sync",
                   help="how workers' pushes step together: sync (default), async, or ssp (bounded staleness)")
    p.add_argument("--staleness", type=int, default=0, metavar="K",
                   help="with --mode ssp: steps a worker may run ahead of the slowest (default 0: sync)")
    p.add_argument("--snapshot-every-steps", type=int, default=0, metavar="K",
                   help="snapshot at every step that is a multiple of K (default 0: off)")
    p.add_argument("--snapshot-every-seconds", type=float, default=0.0, metavar="S",
                   help="snapshot at the first step boundary S seconds after the previous snapshot (default 0: off); "
                        "a job always snapshots at its first and its final step")
    p.add_argument("--heartbeat", type=float, default=1.0, metavar="S", help="seconds between heartbeats (default 1)")
    p.add_argument("--member-timeout", type=float, default=10.0, metavar="S",
                   help="a member silent this long is dead (default 10)")
    p.add_argument("--server-timeout", type=float, default=120.0, metavar="S",
                   help="deadline of each save or restore on the servers (default 120)")
    p.add_argument("--keep", type=int, default=3, metavar="N", help="complete snapshots kept (default 3)")
    p.add_argument("--max-state-bytes", type=int, default=P.DEFAULT_MAX_STATE_BYTES, metavar="B",
                   help="largest state a worker may send at a snapshot (default 256 MiB)")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help=f"file holding the shared token (default: ${ENV_VAR})")
    args = p.parse_args(argv)

    def fail(message: str, code: int = 2) -> int:
        print(f"sparsecore coordinator: error: {message}", file=sys.stderr)
        return code

    if not 0 <= args.port < 65536:
        return fail(f"--port must be in [0, 65535], got {args.port}")
    try:
        token = resolve_token(args.token_file, None)
        coordinator = Coordinator(num_servers=args.servers, num_workers=args.workers, snapshot_dir=args.snapshot_dir,
                                  port=args.port, address=args.address, token=token, mode=args.mode, staleness=args.staleness,
                                  snapshot_every_steps=args.snapshot_every_steps,
                                  snapshot_every_seconds=args.snapshot_every_seconds, heartbeat=args.heartbeat,
                                  member_timeout=args.member_timeout, restore_timeout=args.server_timeout,
                                  keep=args.keep, max_state_bytes=args.max_state_bytes)
        coordinator.start()
    except ValueError as e:
        return fail(str(e))
    except (OSError, RuntimeError) as e:
        return fail(str(e), 1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"coordinator on {coordinator.endpoint} generation {coordinator.status()['generation']}", flush=True)
    done = False
    while not stop.is_set() and not done:
        done = coordinator.wait(0.5)
    coordinator.stop()
    if done and coordinator.failed:
        print(f"job failed: {coordinator.failed}", flush=True)
        return 1
    if done:
        print("job done", flush=True)
    return 0
