"""Forged and damaged checkpoint files are errors, never memory reads: sizes that lie, dims
that lie, duplicate tables, FIFOs and symlinks, malformed fields, and manifests that ask for
far more memory than their files hold. Each is refused with CorruptDataError before anything
is read past a file's end, allocated beyond it, or waited on."""

import json
import os
import struct
import sys
import threading

import numpy as np
import pytest

import sparsecore as sc

sys.path.insert(0, os.path.dirname(__file__))
from checkpoint_support import HEADER, checksum64, forge, manifest, row_files, write_manifest  # noqa: E402

CFG = sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1), shard_bits=2)


def trained(n=300, tables=("a", "b")):
    emb = sc.EmbeddingCollection({t: CFG for t in tables}, seed=7)
    ids = np.arange(n, dtype=np.int64)
    batch = {t: (ids, np.arange(n + 1, dtype=np.int64)) for t in tables}
    out = emb.forward(batch)
    emb.backward(batch, {t: np.ones_like(o) for t, o in out.items()})
    return emb


def load_within(path, seconds=20):
    """EmbeddingCollection.load(path) on a thread, bounded in time: a load that blocks (on a
    FIFO, say) fails the test instead of hanging it."""
    result = {}

    def run():
        try:
            result["value"] = sc.EmbeddingCollection.load(path)
        except BaseException as e:  # re-raised on the test's thread
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "load blocked"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture
def ck(tmp_path):
    path = tmp_path / "ck"
    trained().save(path)
    return path


def test_the_reference_checksum_matches_the_files(ck):
    entry = manifest(ck)["tables"][0]["files"][0]
    assert f"{checksum64((ck / entry['path']).read_bytes()):016x}" == entry["checksum"]


def test_a_header_claiming_2_40_rows_is_refused(ck):
    data = bytearray(row_files(ck)[0].read_bytes())
    fields = list(HEADER.unpack_from(data))
    fields[5] = 1 << 40
    HEADER.pack_into(data, 0, *fields)
    forge(ck, 0, bytes(data), rows=1 << 40)
    with pytest.raises(sc.CorruptDataError, match="rows"):
        load_within(ck)


def test_a_header_claiming_4_rows_with_no_data_is_refused(ck):
    data = bytearray(row_files(ck)[0].read_bytes()[:64])
    fields = list(HEADER.unpack_from(data))
    fields[5] = 4
    HEADER.pack_into(data, 0, *fields)
    forge(ck, 0, bytes(data), rows=4)
    with pytest.raises(sc.CorruptDataError, match="rows"):
        load_within(ck)


def test_a_header_whose_rows_disagree_with_its_size_is_refused(ck):
    data = bytearray(row_files(ck)[0].read_bytes())
    fields = list(HEADER.unpack_from(data))
    fields[5] += 3  # more rows than the bytes hold, manifest agreeing with the header
    HEADER.pack_into(data, 0, *fields)
    forge(ck, 0, bytes(data), rows=fields[5])
    with pytest.raises(sc.CorruptDataError):
        load_within(ck)


@pytest.mark.parametrize("dim", [1, 4096])
def test_a_config_dim_that_lies_about_the_rows_is_refused(ck, dim):
    m = manifest(ck)
    m["tables"][0]["config"]["dim"] = dim
    write_manifest(ck, m)
    with pytest.raises(sc.CorruptDataError, match="dim"):
        load_within(ck)


def test_a_header_dim_that_lies_is_refused(ck):
    data = bytearray(row_files(ck)[0].read_bytes())
    fields = list(HEADER.unpack_from(data))
    fields[2] = 4096
    HEADER.pack_into(data, 0, *fields)
    forge(ck, 0, bytes(data))
    with pytest.raises(sc.CorruptDataError, match="does not match"):
        load_within(ck)


def test_duplicate_table_names_are_refused(ck):
    m = manifest(ck)
    m["tables"][1]["config"]["name"] = m["tables"][0]["config"]["name"]
    write_manifest(ck, m)
    with pytest.raises(sc.CorruptDataError, match="twice"):
        load_within(ck)


def test_a_file_named_twice_is_refused(ck):
    m = manifest(ck)
    m["tables"][1]["files"][0]["path"] = m["tables"][0]["files"][0]["path"]
    write_manifest(ck, m)
    with pytest.raises(sc.CorruptDataError, match="twice"):
        load_within(ck)


@pytest.mark.parametrize("path", ["../outside.rows", "/etc/passwd", "..", "a/b.rows", ""])
def test_file_paths_outside_the_checkpoint_are_refused(ck, path):
    m = manifest(ck)
    m["tables"][0]["files"][0]["path"] = path
    write_manifest(ck, m)
    with pytest.raises(sc.CorruptDataError, match="outside the checkpoint"):
        load_within(ck)


@pytest.mark.parametrize("field,value", [
    ("checksum", "0" * 4000), ("checksum", "zz" * 8), ("checksum", 5), ("rows", -1), ("rows", "3"),
    ("bytes", 1.5), ("bucket_lo", -1), ("bucket_hi", 70000), ("bucket_lo", 2**70),
])
def test_every_malformed_field_is_corrupt_data(ck, field, value):
    m = manifest(ck)
    m["tables"][0]["files"][0][field] = value
    write_manifest(ck, m)
    with pytest.raises(sc.CorruptDataError):
        load_within(ck)


@pytest.mark.parametrize("mutation", [
    lambda m: m.pop("tables"), lambda m: m.update(step=-5), lambda m: m.update(seed="x"),
    lambda m: m.update(tables={}), lambda m: m["tables"][0].update(config=[]),
    lambda m: m["tables"][0].update(rows=10**6), lambda m: m["tables"][0]["files"].append({"path": "x.rows"}),
])
def test_malformed_manifests_are_corrupt_data(ck, mutation):
    m = manifest(ck)
    mutation(m)
    write_manifest(ck, m)
    with pytest.raises(sc.CorruptDataError):
        load_within(ck)


def test_a_fifo_in_place_of_a_row_file_is_refused_without_blocking(ck):
    victim = row_files(ck)[0]
    victim.unlink()
    os.mkfifo(victim)
    with pytest.raises(sc.CorruptDataError, match="not a regular file"):
        load_within(ck)


def test_a_fifo_in_place_of_the_manifest_is_refused_without_blocking(ck):
    (ck / "manifest.json").unlink()
    os.mkfifo(ck / "manifest.json")
    with pytest.raises(sc.CorruptDataError, match="not a regular file"):
        load_within(ck)


def test_a_symlinked_row_file_is_refused(ck, tmp_path):
    victim = row_files(ck)[0]
    outside = tmp_path / "outside.rows"
    outside.write_bytes(victim.read_bytes())  # even the right bytes, through a link, are refused
    victim.unlink()
    victim.symlink_to(outside)
    with pytest.raises(sc.CorruptDataError, match="symlink"):
        load_within(ck)


def test_a_manifest_asking_for_many_shards_of_empty_tables_is_refused_cheaply(ck):
    m = manifest(ck)
    template = m["tables"][0]
    m["tables"] = []
    for i in range(40):
        t = json.loads(json.dumps(template))
        t["config"]["name"] = f"t{i}"
        t["config"]["shard_bits"] = 16
        t["files"], t["rows"] = [], 0
        m["tables"].append(t)
    write_manifest(ck, m)
    assert os.path.getsize(ck / "manifest.json") < 40_000
    with pytest.raises(sc.CorruptDataError, match="shards"):
        load_within(ck)


def test_empty_tables_write_no_row_files(tmp_path):
    emb = sc.EmbeddingCollection({"wide": sc.TableConfig(dim=4, shard_bits=16)}, seed=1)
    emb.save(tmp_path / "ck")
    assert os.listdir(tmp_path / "ck") == ["manifest.json"]
    back = sc.EmbeddingCollection.load(tmp_path / "ck")
    assert back.sizes() == {"wide": 0}


def test_a_wide_table_writes_a_bounded_number_of_files(tmp_path):
    emb = trained(n=5000, tables=("a",))
    wide = sc.EmbeddingCollection({"a": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1), shard_bits=16)}, seed=7)
    ids = np.arange(5000, dtype=np.int64)
    batch = {"a": (ids, np.arange(5001, dtype=np.int64))}
    out = wide.forward(batch)
    wide.backward(batch, {"a": np.ones_like(out["a"])})
    wide.save(tmp_path / "ck")
    assert len(row_files(tmp_path / "ck")) <= 64
    back = sc.EmbeddingCollection.load(tmp_path / "ck")
    np.testing.assert_array_equal(back.lookup("a", ids), wide.lookup("a", ids))
    assert emb.sizes() == back.sizes()


def test_a_forged_file_leaves_the_live_collection_unchanged(ck):
    live = trained()
    before = live.lookup("a", np.arange(300, dtype=np.int64))
    data = bytearray(row_files(ck)[-1].read_bytes())
    struct.pack_into("<Q", data, 24, 1 << 40)
    forge(ck, len(row_files(ck)) - 1, bytes(data), rows=1 << 40)
    with pytest.raises(sc.CorruptDataError):
        live.restore(ck)
    np.testing.assert_array_equal(live.lookup("a", np.arange(300, dtype=np.int64)), before)
