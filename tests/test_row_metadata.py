"""Row metadata (update count, last step) as rows hold it: packed into 8 bytes in memory,
exported and checkpointed in the 16-byte form."""

import numpy as np

import sparsecore as sc


def _collection():
    return sc.EmbeddingCollection({"t": sc.TableConfig(dim=16, optimizer=sc.Adagrad(lr=0.1))}, seed=2)


def _step(emb, ids):
    offsets = np.array([0, len(ids)], np.int64)
    emb.backward({"t": (np.asarray(ids, np.int64), offsets)}, {"t": np.ones((1, 16), np.float32)})


def test_row_record_is_floats_plus_eight_bytes_of_metadata():
    assert _collection().bytes_per_row("t") == 32 * 4 + 8


def test_update_count_and_last_step_are_exported():
    emb = _collection()
    _step(emb, [1, 2])
    _step(emb, [2])
    e = emb.export("t")
    got = {int(k): (int(c), int(s)) for k, c, s in zip(e["keys"], e["update_count"], e["last_step"])}
    assert got == {1: (1, 1), 2: (2, 2)}


def test_last_step_saturates_past_32_bits_and_survives_a_checkpoint(tmp_path):
    emb = _collection()
    emb._c.step = 2**33
    _step(emb, [7])
    assert emb.export("t")["last_step"].tolist() == [2**32 - 1]
    emb.save(tmp_path / "ckpt")
    back = sc.EmbeddingCollection.load(tmp_path / "ckpt")
    assert back.export("t")["last_step"].tolist() == [2**32 - 1]
    assert back.export("t")["update_count"].tolist() == [1]
