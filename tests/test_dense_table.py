"""Tables with a known number of ids (``TableConfig(num_embeddings=N)``): rows found by direct
index, every feature of hash tables. A dense table gives the same bits as a hash table on the
same ids (same seed, same initializer, same update rules), for every optimizer, pooling mode
and storage; ids outside [0, N) raise or are hashed into the range; checkpoints record N and
refuse a mismatch; an embedded collection and one server process agree bit for bit."""

import json
import os

import numpy as np
import pytest

import sparsecore as sc

from reference import OPTIMIZERS, RowState, assert_pooled, random_batch, unpool

N = 97


def _pair(opt, pooling="sum", storage="fp32", n=N, **kw):
    hashed = sc.EmbeddingCollection({"t": sc.TableConfig(dim=6, optimizer=opt, pooling=pooling, storage=storage)},
                                    seed=5)
    dense = sc.EmbeddingCollection(
        {"t": sc.TableConfig(dim=6, optimizer=opt, pooling=pooling, storage=storage, num_embeddings=n, **kw)}, seed=5)
    return hashed, dense


def _assert_same(a, b, what):
    if isinstance(a, tuple):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(y, x, err_msg=what)
    else:
        np.testing.assert_array_equal(b, a, err_msg=what)


@pytest.mark.parametrize("storage", ["fp32", "fp16"])
@pytest.mark.parametrize("pooling", ["sum", "mean", "none"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_dense_table_trains_like_the_hash_table_bit_for_bit(opt_name, pooling, storage):
    opt = OPTIMIZERS[opt_name]
    hashed, dense = _pair(opt, pooling, storage)
    rng = np.random.default_rng()
    pool = np.arange(N, dtype=np.int64)
    for step in range(1, 6):
        weighted = step % 2 == 0
        ids, offsets, weights = random_batch(rng, 17, 7, pool[: rng.integers(5, N + 1)], weighted=weighted)
        batch = {"t": (ids, offsets, weights) if weighted else (ids, offsets)}
        _assert_same(hashed.evaluate(batch)["t"], dense.evaluate(batch)["t"], f"evaluate, step {step}")
        want = hashed.forward(batch)["t"]
        got = dense.forward(batch)["t"]
        _assert_same(want, got, f"forward, step {step}")
        out = want[0] if pooling == "none" else want
        grad = rng.standard_normal(out.shape).astype(np.float32)
        assert hashed.backward(batch, {"t": grad}) == dense.backward(batch, {"t": grad}) == step
    np.testing.assert_array_equal(dense.lookup("t", pool), hashed.lookup("t", pool))
    assert dense.sizes() == hashed.sizes()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_dense_table_matches_the_numpy_reference(opt_name):
    opt = OPTIMIZERS[opt_name]
    _, dense = _pair(opt)
    rng = np.random.default_rng()
    ref: dict[int, RowState] = {}
    for step in range(1, 4):
        ids, offsets, _ = random_batch(rng, 19, 6, np.arange(N, dtype=np.int64))
        for k, row in zip(ids, dense.lookup("t", ids, insert=True)):
            ref.setdefault(int(k), RowState(row, opt))
        out = dense.forward({"t": (ids, offsets)})["t"]
        assert_pooled(out, np.stack([ref[int(k)].w for k in ids]) if ids.size else np.zeros((0, 6)), offsets, None,
                      "sum")
        grad = rng.standard_normal(out.shape).astype(np.float32)
        dense.backward({"t": (ids, offsets)}, {"t": grad})
        for k, g in unpool(ids, offsets, None, "sum", grad).items():
            ref[k].apply(opt, g, step)
    keys = np.array(sorted(ref), dtype=np.int64)
    np.testing.assert_allclose(dense.lookup("t", keys), np.stack([ref[int(k)].w for k in keys]), rtol=2e-5,
                               atol=2e-6)


def test_untouched_ids_read_as_zeros_and_sizes_count_touched_rows():
    dense = sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, num_embeddings=1000)}, seed=1)
    ids = np.array([3, 999, 0], np.int64)
    offsets = np.array([0, 1, 3], np.int64)
    assert not dense.evaluate({"t": (ids, offsets)})["t"].any()
    assert not dense.forward({"t": (ids, offsets)}, train=False)["t"].any()
    assert dense.sizes() == {"t": 0}
    dense.forward({"t": (ids, offsets)})
    assert dense.sizes() == {"t": 3}
    assert dense.evaluate({"t": (ids, offsets)})["t"].any()


@pytest.mark.parametrize("bad", [-1, 1000, 2**63 - 1, -(2**63)])
def test_out_of_range_ids_are_refused_naming_table_and_id(bad):
    dense = sc.EmbeddingCollection({"clicks": sc.TableConfig(dim=4, num_embeddings=1000)}, seed=1)
    ids = np.array([1, bad, 2], np.int64)
    offsets = np.array([0, 3], np.int64)
    for call in (lambda: dense.forward({"clicks": (ids, offsets)}), lambda: dense.evaluate({"clicks": (ids, offsets)}),
                 lambda: dense.lookup("clicks", ids, insert=True)):
        with pytest.raises(ValueError, match=rf"table 'clicks': id {bad} is outside \[0, 1000\)"):
            call()
    assert dense.sizes() == {"clicks": 0}  # nothing was created


def test_hash_mode_maps_out_of_range_ids_into_the_range_deterministically():
    cfg = sc.TableConfig(dim=4, num_embeddings=50, out_of_range="hash")
    a = sc.EmbeddingCollection({"t": cfg}, seed=3)
    b = sc.EmbeddingCollection({"t": cfg}, seed=3)
    rng = np.random.default_rng()
    ids = rng.integers(-(2**63), 2**63 - 1, size=200, dtype=np.int64)
    offsets = np.arange(0, 201, 4, dtype=np.int64)
    np.testing.assert_array_equal(a.forward({"t": (ids, offsets)})["t"], b.forward({"t": (ids, offsets)})["t"])
    assert 0 < a.sizes()["t"] <= 50
    # An out-of-range id reads the row of the in-range id it maps to.
    rows = a.lookup("t", ids)
    exported = a.export("t")
    by_key = dict(zip(exported["keys"].tolist(), exported["weights"]))
    assert all(0 <= k < 50 for k in by_key)
    for row in rows:
        assert any(np.array_equal(row, w) for w in by_key.values())


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_embeddings=0), ValueError, r"num_embeddings must be in \[1, 2\^40\]"),
    (dict(num_embeddings=-5), ValueError, r"num_embeddings must be in \[1, 2\^40\]"),
    (dict(num_embeddings=2**40 + 1), ValueError, r"num_embeddings must be in \[1, 2\^40\]"),
    (dict(num_embeddings=10.0), TypeError, "num_embeddings must be an int"),
    (dict(num_embeddings=True), TypeError, "num_embeddings must be an int"),
    (dict(num_embeddings=10, out_of_range="wrap"), ValueError, "out_of_range must be 'error' or 'hash'"),
    (dict(out_of_range="hash"), ValueError, "out_of_range applies only to a table with num_embeddings"),
])
def test_bad_configs_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        sc.EmbeddingCollection({"t": sc.TableConfig(dim=4, **kwargs)}, seed=1)


def test_bad_configs_are_refused_by_the_engine_json():
    from sparsecore import _core
    base = json.loads(sc.config.tables_to_json({"t": sc.TableConfig(dim=4, num_embeddings=8)}))
    for field, value, match in [("num_embeddings", 0, "num_embeddings"), ("num_embeddings", 2**41, "num_embeddings"),
                                ("out_of_range", "clip", "unknown out_of_range")]:
        bad = [dict(base[0], **{field: value})]
        with pytest.raises(ValueError, match=match):
            _core.EmbeddingCollection(json.dumps(bad), 1)


def test_config_json_round_trip():
    cfg = sc.TableConfig(dim=4, num_embeddings=123, out_of_range="hash", storage="fp16")
    assert sc.TableConfig.from_dict(cfg.to_dict("t")) == cfg
    plain = sc.TableConfig(dim=4)
    assert "num_embeddings" not in plain.to_dict("t")
    assert sc.TableConfig.from_dict(plain.to_dict("t")) == plain


def _train(coll, rng, steps=4, n=N):
    for _ in range(steps):
        ids, offsets, _ = random_batch(rng, 13, 5, np.arange(n, dtype=np.int64))
        out = coll.forward({"t": (ids, offsets)})["t"]
        coll.backward({"t": (ids, offsets)}, {"t": rng.standard_normal(out.shape).astype(np.float32)})


def test_checkpoint_round_trip_records_num_embeddings(tmp_path):
    _, dense = _pair(sc.Adam(lr=0.01), out_of_range="hash")
    _train(dense, np.random.default_rng())
    path = str(tmp_path / "ck")
    dense.save(path)
    manifest = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    cfg = manifest["tables"][0]["config"]
    assert cfg["num_embeddings"] == N and cfg["out_of_range"] == "hash"
    loaded = sc.EmbeddingCollection.load(path)
    keys = np.arange(N, dtype=np.int64)
    np.testing.assert_array_equal(loaded.lookup("t", keys), dense.lookup("t", keys))
    assert loaded.sizes() == dense.sizes()
    assert loaded.tables["t"].num_embeddings == N
    fresh = _pair(sc.Adam(lr=0.01), out_of_range="hash")[1]
    fresh.restore(path)
    np.testing.assert_array_equal(fresh.lookup("t", keys), dense.lookup("t", keys))


@pytest.mark.parametrize("other", [dict(num_embeddings=N + 1), dict(num_embeddings=N, out_of_range="hash"), dict()])
def test_restore_into_a_different_size_is_refused(tmp_path, other):
    _, dense = _pair(sc.Adagrad(lr=0.1))
    _train(dense, np.random.default_rng())
    path = str(tmp_path / "ck")
    dense.save(path)
    target = sc.EmbeddingCollection({"t": sc.TableConfig(dim=6, optimizer=sc.Adagrad(lr=0.1), **other)}, seed=5)
    before = target.sizes()
    with pytest.raises(ValueError, match="num_embeddings"):
        target.restore(path)
    assert target.sizes() == before


def test_forged_key_outside_the_range_is_refused(tmp_path):
    _, dense = _pair(sc.SGD(lr=0.1))
    _train(dense, np.random.default_rng())
    path = tmp_path / "ck"
    dense.save(str(path))
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tables"][0]["config"]["num_embeddings"] = 3  # files now hold keys beyond it
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(sc.CorruptDataError, match=r"outside \[0, 3\)"):
        sc.EmbeddingCollection.load(str(path))
    manifest["tables"][0]["config"]["num_embeddings"] = 0
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="num_embeddings"):
        sc.EmbeddingCollection.load(str(path))
    assert os.path.isdir(path)


@pytest.fixture(scope="module")
def server():
    from test_ps import start_server_process, stop
    p, address = start_server_process("--shards", 2)
    yield address
    stop(p)


@pytest.mark.parametrize("out_of_range", ["error", "hash"])
def test_one_server_process_matches_the_embedded_run_bit_for_bit(server, out_of_range):
    tables = {f"dense-{out_of_range}-{name}": sc.TableConfig(dim=5, optimizer=opt, num_embeddings=N,
                                                             out_of_range=out_of_range)
              for name, opt in OPTIMIZERS.items()}
    embedded = sc.EmbeddingCollection(tables, seed=11)
    cluster = sc.EmbeddingCollection(tables, seed=11, server=sc.connect([server]))
    rng = np.random.default_rng()
    hi = 3 * N if out_of_range == "hash" else N
    for step in range(8):
        batch, grads = {}, {}
        for name in tables:
            ids, offsets, _ = random_batch(rng, 16, 6, np.arange(-N if out_of_range == "hash" else 0, hi))
            batch[name] = (ids, offsets)
        np.testing.assert_array_equal(cluster.evaluate(batch)[name], embedded.evaluate(batch)[name])
        want = embedded.forward(batch)
        got = cluster.forward(batch)
        for name in tables:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} output, step {step}")
            grads[name] = rng.standard_normal(want[name].shape).astype(np.float32)
        assert embedded.backward(batch, grads) == cluster.backward(batch, grads) == step + 1
    keys = np.arange(N, dtype=np.int64)
    for name in tables:
        np.testing.assert_array_equal(cluster.lookup(name, keys), embedded.lookup(name, keys), err_msg=name)
    assert cluster.sizes() == embedded.sizes()


def test_server_refuses_out_of_range_ids_and_changes_nothing(server):
    client = sc.connect([server])
    client.create_table("dense-refuse", sc.TableConfig(dim=3, num_embeddings=10, optimizer=sc.SGD(lr=1.0)), seed=2)
    before = client.lookup("dense-refuse", np.arange(10, dtype=np.int64), insert=True)
    with pytest.raises(ValueError, match=r"id 10 is outside \[0, 10\)"):
        client.push("dense-refuse", np.array([10], np.int64), np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"id -3 is outside \[0, 10\)"):
        client.lookup("dense-refuse", np.array([2, -3], np.int64), insert=True)
    np.testing.assert_array_equal(client.lookup("dense-refuse", np.arange(10, dtype=np.int64)), before)


CLI_SMALL = ["train", "--vocab-size", "300", "--batch-size", "200", "--steps", "3", "--eval-samples", "400",
             "--hidden", "8", "--dim", "3", "--no-progress", "--threads", "2", "-q"]


def test_cli_trains_known_size_tables_and_resumes_their_checkpoint(capsys, tmp_path):
    pytest.importorskip("torch")
    from sparsecore import cli
    ck = ["--checkpoint-dir", str(tmp_path / "job")]
    assert cli.main(CLI_SMALL + ["--num-embeddings", "300"] + ck) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "job" / "embedding" / "manifest.json").read_text())
    assert {t["config"]["num_embeddings"] for t in manifest["tables"]} == {300}
    assert cli.main(CLI_SMALL[:-3] + ["--steps", "5", "--num-embeddings", "300"] + ck) == 0
    # The same job with another size is refused rather than resumed.
    assert cli.main(CLI_SMALL[:-3] + ["--steps", "7", "--num-embeddings", "301"] + ck) != 0
    assert "num_embeddings" in capsys.readouterr().err


@pytest.mark.parametrize("flags, match", [(["--num-embeddings", "-2"], "num_embeddings"),
                                          (["--num-embeddings", "300", "--out-of-range", "clip"], "out_of_range"),
                                          (["--num-embeddings", str(2**41)], "num_embeddings")])
def test_cli_refuses_bad_known_size_settings(capsys, flags, match):
    pytest.importorskip("torch")
    from sparsecore import cli
    assert cli.main(CLI_SMALL + flags) == 2
    assert match in capsys.readouterr().err


def test_cli_names_an_id_beyond_num_embeddings(capsys):
    pytest.importorskip("torch")
    from sparsecore import cli
    assert cli.main(CLI_SMALL + ["--num-embeddings", "5"]) == 1  # a data error, not a usage error
    assert "is outside [0, 5)" in capsys.readouterr().err
    assert cli.main(CLI_SMALL + ["--num-embeddings", "5", "--out-of-range", "hash"]) == 0


def test_torch_bridge_trains_a_known_size_table_like_a_hash_table():
    torch = pytest.importorskip("torch")
    from sparsecore.torch import EmbeddingBagCollection
    rng = np.random.default_rng()
    mods = [EmbeddingBagCollection({"t": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1), **kw)}, seed=9,
                                   threads=None) for kw in ({}, {"num_embeddings": N})]
    for _ in range(3):
        ids, offsets, _ = random_batch(rng, 11, 5, np.arange(N, dtype=np.int64))
        batch = {"t": (torch.from_numpy(ids), torch.from_numpy(offsets))}
        outs = []
        for m in mods:
            out = m(batch)["t"]
            (out * out).sum().backward()
            outs.append(out.detach().numpy())
        np.testing.assert_array_equal(outs[1], outs[0])
    for m in mods:
        m.eval()
    ids = np.arange(N, dtype=np.int64)
    batch = {"t": (torch.from_numpy(ids), torch.arange(N + 1))}
    np.testing.assert_array_equal(mods[1](batch)["t"].numpy(), mods[0](batch)["t"].numpy())


def test_server_snapshot_round_trip_of_a_known_size_table(tmp_path):
    from test_ps import start_server_process, stop
    p, address = start_server_process("--shards", 2, "--snapshot-dir", tmp_path)
    try:
        client = sc.connect([address])
        client.create_table("snap", sc.TableConfig(dim=3, num_embeddings=N, optimizer=sc.Adagrad(lr=0.1)), seed=4)
        rng = np.random.default_rng()
        ids = np.unique(rng.integers(0, N, size=30)).astype(np.int64)
        client.lookup("snap", ids, insert=True)
        client.push("snap", ids, rng.standard_normal((ids.size, 3)).astype(np.float32))
        keys = np.arange(N, dtype=np.int64)
        saved = client.lookup("snap", keys)
        client.save("one")
        client.push("snap", ids, rng.standard_normal((ids.size, 3)).astype(np.float32))
        assert not np.array_equal(client.lookup("snap", keys), saved)
        client.restore("one")
        np.testing.assert_array_equal(client.lookup("snap", keys), saved)
    finally:
        stop(p)
