"""``EmbeddingCollection.lookup`` while other threads erase, evict and train: every row it
returns is a value that id's row had (here always its initial value, since nothing changes
weights), never a row freed and reused by another id or caught half rewritten."""

import threading

import numpy as np
import pytest

import sparsecore as sc

DIM = 16
VOCAB = 4096
ROUNDS = 150


def _config(**kw):
    # lr 0: training never changes a weight, so a row always holds its id's initial value.
    return sc.TableConfig(dim=DIM, optimizer=sc.SGD(lr=0.0), init=sc.Normal(1.0), shard_bits=2, **kw)


def _initial_rows(config, ids):
    fresh = sc.EmbeddingCollection({"t": config}, seed=11)
    return fresh.lookup("t", ids, insert=True)


def _run(threads):
    errors = []

    def guarded(fn, *args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    running = [threading.Thread(target=guarded, args=t) for t in threads]
    for t in running:
        t.start()
    for t in running:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in running), "a thread did not finish"
    assert not errors, errors


def _checking_reader(coll, want, default, bad, seed):
    rng = np.random.default_rng(seed)
    for r in range(ROUNDS):
        ids = rng.integers(0, VOCAB, 512).astype(np.int64)
        insert = r % 2 == 0
        got = coll.lookup("t", ids, insert=insert)
        same = np.all(got == want[ids], axis=1)
        if not insert:  # an id erased or evicted meanwhile reads the default row
            same |= np.all(got == default, axis=1)
        if not same.all():
            bad.append(int(ids[~same][0]))
            return


def test_lookup_never_reads_a_row_erased_and_reused_meanwhile():
    config = _config()
    coll = sc.EmbeddingCollection({"t": config}, seed=11)
    want = _initial_rows(config, np.arange(VOCAB, dtype=np.int64))
    coll.lookup("t", np.arange(VOCAB, dtype=np.int64), insert=True)
    bad = []

    def eraser():
        rng = np.random.default_rng(99)
        for _ in range(ROUNDS * 2):
            coll.erase("t", rng.integers(0, VOCAB, 256).astype(np.int64))

    _run([(_checking_reader, coll, want, 0.0, bad, 1), (_checking_reader, coll, want, 0.0, bad, 2), (eraser,)])
    assert not bad, f"lookup returned a row that id {bad[0]} never had"


@pytest.mark.parametrize("eviction", ["exact", "sampled"])
def test_lookup_never_reads_a_row_evicted_and_reused_meanwhile(eviction):
    config = _config(expiry=sc.Expiry(capacity=1024, eviction=eviction))
    coll = sc.EmbeddingCollection({"t": config}, seed=11)
    want = _initial_rows(_config(), np.arange(VOCAB, dtype=np.int64))
    bad = []

    def trainer():
        # Training calls return the rows evicted before (no holder left) to their shards.
        rng = np.random.default_rng(7)
        for _ in range(ROUNDS):
            ids = rng.integers(0, VOCAB, 256).astype(np.int64)
            batch = {"t": (ids, np.arange(ids.size + 1, dtype=np.int64))}
            out = coll.forward(batch)
            coll.backward(batch, {"t": np.ones_like(out["t"])})

    _run([(_checking_reader, coll, want, 0.0, bad, 1), (_checking_reader, coll, want, 0.0, bad, 2), (trainer,)])
    assert not bad, f"lookup returned a row that id {bad[0]} never had"
    assert coll.table_size("t") <= 1024

