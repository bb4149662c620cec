"""The coordinator's snapshot directory: its own record of cluster-wide snapshots.

Layout under ``--snapshot-dir`` (one directory per job)::

    cluster.json                 generation, next snapshot number, done (rewritten atomically)
    c<seq>-step-<k>/manifest.json   a complete cluster snapshot: written last
    c<seq>-step-<k>/worker-<r>.state  worker r's state (dense model, optimizer, reader)
    .c<seq>-step-<k>.staging/    a snapshot being written (removed at start)

A cluster snapshot ``c<seq>-step-<k>`` is complete once the servers committed their snapshot
of the same name (under their own ``--snapshot-dir``) and this directory holds its manifest;
the newest complete one (highest ``seq``) is what the cluster rolls back to. Every file is
written to a temporary name, fsynced, and switched in by rename; a crash at any instant leaves
the previous snapshot whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from typing import Any, Optional

log = logging.getLogger("sparsecore.cluster")

FORMAT = "sparsecore-cluster-snapshot"
# The series of cluster snapshots (Cluster.prune_snapshots(prefix=...)): c<seq>-step-<k>.
SERIES_PREFIX = "c"
_NAME = re.compile(r"^c(\d{6,})-step-(\d+)$")


def snapshot_name(seq: int, step: int) -> str:
    return f"{SERIES_PREFIX}{seq:06d}-step-{step}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomically(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    _write_file(tmp, json.dumps(doc, indent=1).encode())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


class SnapshotStore:
    """The coordinator's side of cluster snapshots (one coordinator thread at a time)."""

    def __init__(self, root: str):
        self.root = os.fspath(root)
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ValueError(f"snapshot directory '{self.root}' is not a directory")
        os.makedirs(self.root, exist_ok=True)
        for entry in os.listdir(self.root):
            if entry.startswith(".") and entry.endswith(".staging"):
                shutil.rmtree(os.path.join(self.root, entry), ignore_errors=True)

    # --- cluster.json -------------------------------------------------------------------
    def load_record(self) -> dict[str, Any]:
        """The persisted record ({} for a new directory); CorruptDataError-like ValueError
        when it is damaged."""
        path = os.path.join(self.root, "cluster.json")
        if not os.path.exists(path):
            return {}
        try:
            with open(path, "rb") as f:
                record = json.loads(f.read())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is damaged: {e}") from None
        if not isinstance(record, dict) or not isinstance(record.get("generation"), int):
            raise ValueError(f"{path} is damaged: no generation")
        return record

    def save_record(self, record: dict[str, Any]) -> None:
        write_json_atomically(os.path.join(self.root, "cluster.json"), record)

    # --- snapshots ----------------------------------------------------------------------
    def write(self, name: str, manifest: dict[str, Any], states: dict[int, tuple[bytes, str]]) -> dict[str, Any]:
        """Writes snapshot ``name``: every worker's state, then the manifest; returns the
        manifest as written (with each state's size and checksum)."""
        staging = os.path.join(self.root, f".{name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        workers = []
        for rank in sorted(states):
            data, encoding = states[rank]
            file = f"worker-{rank}.state"
            _write_file(os.path.join(staging, file), data)
            workers.append({"rank": rank, "file": file, "bytes": len(data), "encoding": encoding,
                            "sha256": hashlib.sha256(data).hexdigest()})
        doc = dict(manifest, format=FORMAT, version=1, name=name, workers=workers)
        _write_file(os.path.join(staging, "manifest.json"), json.dumps(doc, indent=1).encode())
        _fsync_dir(staging)
        target = os.path.join(self.root, name)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(staging, target)
        _fsync_dir(self.root)
        return doc

    def read_manifest(self, name: str) -> dict[str, Any]:
        if not _NAME.match(name):
            raise ValueError(f"'{name}' is not a cluster snapshot name")
        with open(os.path.join(self.root, name, "manifest.json"), "rb") as f:
            doc = json.loads(f.read())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("name") != name:
            raise ValueError(f"snapshot '{name}': manifest is not a cluster snapshot's")
        return doc

    def read_state(self, manifest: dict[str, Any], rank: int) -> tuple[bytes, str]:
        """Worker ``rank``'s state in snapshot ``manifest`` (KeyError when it holds none),
        checked against the manifest's size and checksum (ValueError when damaged)."""
        for entry in manifest["workers"]:
            if entry["rank"] == rank:
                path = os.path.join(self.root, manifest["name"], entry["file"])
                with open(path, "rb") as f:
                    data = f.read(entry["bytes"] + 1)
                if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise ValueError(f"snapshot '{manifest['name']}': {entry['file']} is damaged")
                return data, entry["encoding"]
        raise KeyError(f"snapshot '{manifest['name']}' holds no state of worker {rank}")

    def complete(self) -> list[dict[str, Any]]:
        """Manifests of the complete snapshots, oldest first (damaged ones skipped, logged)."""
        found = []
        for entry in os.listdir(self.root):
            m = _NAME.match(entry)
            if not m or not os.path.isfile(os.path.join(self.root, entry, "manifest.json")):
                continue
            try:
                found.append(self.read_manifest(entry))
            except (OSError, ValueError) as e:
                log.warning("skipping cluster snapshot %s: %s", entry, e)
        return sorted(found, key=lambda d: d["seq"])

    def latest(self) -> Optional[dict[str, Any]]:
        done = self.complete()
        return done[-1] if done else None

    def prune(self, keep: int) -> None:
        """Removes all but the newest ``keep`` complete snapshots of this directory."""
        for doc in self.complete()[:-keep] if keep > 0 else []:
            shutil.rmtree(os.path.join(self.root, doc["name"]), ignore_errors=True)
