"""Streaming input: FollowDirectory over partitions that appear while it reads, its position
in Trainer checkpoints, and progressive validation against an offline reference."""

import os
import threading
import time

import numpy as np
import pytest

from sparsecore.data import FollowDirectory, LibsvmReader

BATCH = 64


def write_partition(root, name, rng, files=2, lines=150, marker=True, vocab=200):
    """A partition of libsvm files whose label depends on the ids (so there is something to
    learn), written as a log shipper would: files first, the marker last."""
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    for f in range(files):
        rows = []
        for _ in range(lines):
            ids = rng.integers(0, vocab, rng.integers(1, 5))
            label = int((ids % 3 == 0).sum() > 0) if rng.random() < 0.9 else int(rng.integers(0, 2))
            rows.append(f"{label} " + " ".join(f"{i}:1" for i in ids))
        tmp = os.path.join(folder, f".part-{f:05d}.tmp")
        with open(tmp, "w") as fh:
            fh.write("\n".join(rows) + "\n")
        os.rename(tmp, os.path.join(folder, f"part-{f:05d}"))
    if marker:
        open(os.path.join(folder, "_SUCCESS"), "w").close()


def open_files(paths):
    return LibsvmReader(paths, batch_size=BATCH)


def labels_of(batches):
    return [np.asarray(b.labels).tolist() for b in batches]


def test_reads_partitions_in_name_order_only_once_complete(tmp_path, rng):
    write_partition(tmp_path, "h02", rng)
    write_partition(tmp_path, "h01", rng)
    write_partition(tmp_path, "h03", rng, marker=False)  # still being written
    os.makedirs(tmp_path / "_tmp")  # not a partition
    src = FollowDirectory(tmp_path, open_files, timeout=0, poll_interval=0.01)
    seen = []
    for _ in src:
        seen.append(src.partition)
    assert list(dict.fromkeys(seen)) == ["h01", "h02"]
    assert sum(1 for _ in FollowDirectory(tmp_path, open_files, timeout=0)) == 2 * (2 * 150 // BATCH + 1)  # batches never span partitions


def test_without_a_marker_a_partition_completes_when_the_next_appears(tmp_path, rng):
    write_partition(tmp_path, "a", rng, marker=False)
    write_partition(tmp_path, "b", rng, marker=False)
    src = FollowDirectory(tmp_path, open_files, marker=None, timeout=0)
    assert {src.partition for _ in src} == {"a"}


def test_follows_partitions_written_while_it_reads(tmp_path, rng):
    """A writer thread drops each partition once the reader is in the previous one (so the
    reader waits for most of them); the reader reads every sample of every partition exactly
    once, in order, and the stream ends when the writer closes it."""
    names = [f"2026-12-06T{h:02d}" for h in range(5)]
    seeds = rng.integers(1 << 30, size=len(names))
    expected_root = tmp_path / "expected"
    for name, seed in zip(names, seeds):
        write_partition(expected_root, name, np.random.default_rng(seed))
    live = tmp_path / "live"
    live.mkdir()
    src = FollowDirectory(live, open_files, timeout=60, poll_interval=0.01)

    def writer():
        for k, (name, seed) in enumerate(zip(names, seeds)):
            for _ in range(6000):  # bounded: at most a minute
                if k == 0 or src.partition == names[k - 1]:
                    break
                time.sleep(0.01)
            write_partition(live, name, np.random.default_rng(seed))
        src.close()

    t = threading.Thread(target=writer)
    t.start()
    got, partitions = [], []
    try:
        while (b := src.next_batch()) is not None:
            got.append(b)
            partitions.append(src.partition)
    finally:
        src.close()
        t.join()
    reference = list(FollowDirectory(expected_root, open_files, timeout=0))
    assert labels_of(got) == labels_of(reference)
    assert list(dict.fromkeys(partitions)) == names


def test_the_stream_ends_after_the_timeout_without_new_data(tmp_path, rng):
    write_partition(tmp_path, "p0", rng)
    src = FollowDirectory(tmp_path, open_files, timeout=0.2, poll_interval=0.05)
    assert sum(1 for _ in src) > 0
    assert src.next_batch() is None  # waited (bounded) and gave up


def test_a_late_partition_is_skipped(tmp_path, rng):
    write_partition(tmp_path, "p2", rng)
    src = FollowDirectory(tmp_path, open_files, timeout=0)
    list(src)
    write_partition(tmp_path, "p1", rng)
    write_partition(tmp_path, "p3", rng)
    assert {src.partition for _ in src} == {"p3"}


def test_state_resumes_at_the_same_batch(tmp_path, rng):
    for name in ("p0", "p1", "p2"):
        write_partition(tmp_path, name, rng)
    full = list(FollowDirectory(tmp_path, open_files, timeout=0))
    for cut in (1, 4, 5, 9, len(full) - 1):
        src = FollowDirectory(tmp_path, open_files, timeout=0)
        for _ in range(cut):
            src.next_batch()
        state = src.state_dict()
        assert state["partition"] in ("p0", "p1", "p2") and state["reader"]["kind"] == "libsvm"
        resumed = FollowDirectory(tmp_path, open_files, timeout=0)
        resumed.load_state_dict(state)
        assert labels_of(list(resumed)) == labels_of(full[cut:])


def test_bad_arguments_and_states_are_refused(tmp_path, rng):
    with pytest.raises(ValueError, match="not a directory"):
        FollowDirectory(tmp_path / "missing", open_files)
    with pytest.raises(ValueError, match="marker"):
        FollowDirectory(tmp_path, open_files, marker="")
    with pytest.raises(ValueError, match="timeout"):
        FollowDirectory(tmp_path, open_files, timeout=-1)
    src = FollowDirectory(tmp_path, open_files, timeout=0)
    with pytest.raises(ValueError, match="source"):
        src.load_state_dict({"kind": "epochs"})
    with pytest.raises(ValueError, match="not in"):
        src.load_state_dict({"kind": "follow", "partition": "nope", "files": [], "reader": None})
    with pytest.raises(ValueError, match="partition name"):
        src.load_state_dict({"kind": "follow", "partition": "../x", "files": [], "reader": None})
    write_partition(tmp_path, "p0", rng)
    src.next_batch()
    state = src.state_dict()
    write_partition(tmp_path, "p0", rng, files=3)  # a complete partition changed
    with pytest.raises(ValueError, match="other files"):
        FollowDirectory(tmp_path, open_files, timeout=0).load_state_dict(state)
