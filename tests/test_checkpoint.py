"""Checkpoint save/load: bit-exact round trips, any thread count and shard layout, and clear
errors on corrupt or truncated files with the live collection untouched."""

import json
import os

import numpy as np
import pytest

import sparsecore as sc
from reference import random_batch


def trained(rng, seed=3, shard_bits=4):
    emb = sc.EmbeddingCollection({
        "user": sc.TableConfig(dim=18, optimizer=sc.Adam(lr=0.01), shard_bits=shard_bits),
        "item": sc.TableConfig(dim=3, optimizer=sc.FTRL(lr=0.1, l1=0.01), pooling="mean", shard_bits=shard_bits),
    }, seed=seed)
    for _ in range(3):
        batch = {n: random_batch(rng, 16, 5, np.concatenate([[-(2**63), 2**63 - 1], rng.integers(-500, 500, 50)]))[:2]
                 for n in ("user", "item")}
        out = emb.forward(batch)
        emb.backward(batch, {n: rng.normal(size=o.shape).astype(np.float32) for n, o in out.items()})
    return emb


def exported(emb):
    out = {}
    for n in emb.names:
        e = emb.export(n)
        order = np.argsort(e["keys"])
        out[n] = {k: v[order] for k, v in e.items()}
    return out


def assert_same(a, b):
    ea, eb = exported(a), exported(b)
    for n in ea:
        for k in ea[n]:
            np.testing.assert_array_equal(ea[n][k], eb[n][k])
    assert a.step == b.step


def test_round_trip_is_bit_exact_and_training_continues_identically(rng, tmp_path):
    emb = trained(rng)
    emb.save(tmp_path / "ck")
    back = sc.EmbeddingCollection.load(tmp_path / "ck")
    assert_same(emb, back)
    assert back.tables == emb.tables
    batch = {"user": (np.array([1, 2, 3], np.int64), np.array([0, 3], np.int64))}
    g = {"user": rng.normal(size=(1, 18)).astype(np.float32)}
    emb.backward(batch, g)
    back.backward(batch, g)
    assert_same(emb, back)


def test_load_with_another_thread_count_and_shard_layout(rng, tmp_path):
    emb = trained(rng, shard_bits=6)
    emb.save(tmp_path / "ck")
    old = sc.num_threads()
    try:
        sc.set_num_threads(1)
        back = sc.EmbeddingCollection.load(tmp_path / "ck")
    finally:
        sc.set_num_threads(old)
    assert_same(emb, back)


def test_save_refuses_to_overwrite_unless_asked(rng, tmp_path):
    emb = trained(rng)
    emb.save(tmp_path / "ck")
    with pytest.raises(ValueError, match="already exists"):
        emb.save(tmp_path / "ck")
    emb.forward({"user": (np.array([123456], np.int64), np.array([0, 1], np.int64))})
    emb.save(tmp_path / "ck", overwrite=True)
    assert_same(emb, sc.EmbeddingCollection.load(tmp_path / "ck"))


def test_a_save_removes_only_the_staging_directories_of_saves_that_died(rng, tmp_path):
    emb = trained(rng)
    died = tmp_path / ".ck.saving-0123456789abcdef"  # how a save names its staging directory
    os.makedirs(died / "part")
    (tmp_path / "elsewhere").mkdir()
    kept = [".ck.saving-notours", ".ck.saving-0123456789ABCDEF", ".ck.saving-0123456789abcdef0", "ck.saving-x"]
    for name in kept:
        (tmp_path / name).mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / ".ck.saving-fedcba9876543210")  # not followed, not ours
    (tmp_path / ".ck.saving-00000000000000aa").write_text("a file")
    kept += [".ck.saving-fedcba9876543210", ".ck.saving-00000000000000aa", "elsewhere"]
    emb.save(tmp_path / "ck")
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["ck"])
    assert_same(emb, sc.EmbeddingCollection.load(tmp_path / "ck"))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(KeyError, match="no finished checkpoint"):
        sc.EmbeddingCollection.load(tmp_path / "nothing")


def data_files(path):
    return sorted(f for f in os.listdir(path) if f.endswith(".rows") and os.path.getsize(path / f) > 64)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_corrupt_checkpoint_raises_and_leaves_live_collection_untouched(rng, tmp_path, damage):
    emb = trained(rng)
    emb.save(tmp_path / "ck")
    live = trained(np.random.default_rng(99), seed=5)
    before = exported(live)
    target = tmp_path / "ck" / data_files(tmp_path / "ck")[0]
    if damage == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) - 7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x10
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (tmp_path / "ck" / "manifest.json").write_text('{"format": "sparsecore.embedding_collection", "tab')
    err = OSError if damage == "delete" else sc.CorruptDataError
    with pytest.raises(err):
        live.restore(tmp_path / "ck")
    with pytest.raises(err):
        sc.EmbeddingCollection.load(tmp_path / "ck")
    after = exported(live)
    for n in before:
        for k in before[n]:
            np.testing.assert_array_equal(before[n][k], after[n][k])


def test_restore_replaces_rows_and_step(rng, tmp_path):
    emb = trained(rng)
    emb.save(tmp_path / "ck")
    other = trained(np.random.default_rng(7))
    other.restore(tmp_path / "ck")
    assert_same(emb, other)


def test_manifest_records_configs_and_files(rng, tmp_path):
    emb = trained(rng)
    emb.save(tmp_path / "ck")
    m = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["step"] == emb.step
    assert [t["config"]["name"] for t in m["tables"]] == ["user", "item"]
    assert m["tables"][0]["config"]["optimizer"]["name"] == "adam"
    assert sum(t["rows"] for t in m["tables"]) == sum(emb.sizes().values())
