"""Training against parameter servers: the Trainer with ``server=sc.connect(...)`` gives what the
embedded run gives; two synchronous workers average their dense gradients over gloo; a worker
killed with SIGKILL and restarted resumes its reader position (nothing lost or read twice)."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sparsecore as sc
from sparsecore.data import SyntheticConfig, SyntheticData

torch = pytest.importorskip("torch")

from reference import assert_close_to_scale  # noqa: E402
from test_ps import _env, start_server_process, stop  # noqa: E402

DATA = SyntheticConfig(num_groups=3, vocab_size=500, min_bag=0, max_bag=6, batch_size=64, seed=3)
TABLES = {"f0": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1)),
          "f1": sc.TableConfig(dim=3, optimizer=sc.SGD(lr=0.2), pooling="mean"),
          "f2": sc.TableConfig(dim=5, optimizer=sc.Adam(lr=0.01))}


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def train(**where):
    model = mlp()
    trainer = sc.Trainer(SyntheticData(DATA), model, TABLES, seed=9, progress=False, deterministic=True, **where)
    trainer.fit(steps=6)
    return trainer, model


def test_trainer_against_a_cluster_matches_embedded():
    server = sc.Server(port=0, shards=2)
    try:
        ref_trainer, ref_model = train()
        trainer, model = train(server=sc.connect([server.endpoint]))
        for (name, p), q in zip(ref_model.named_parameters(), model.parameters()):
            # One ulp apart at most: the embedded run feeds the MLP one concatenated tensor
            # (forward_concat), the cluster a torch.cat of its groups; BLAS may block the two
            # differently.
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
        ids = np.arange(DATA.vocab_size, dtype=np.int64)
        for name in TABLES:
            want = ref_trainer.embedding.collection.lookup(name, ids)
            got = trainer.embedding.collection.lookup(name, ids)
            assert_close_to_scale(got, want, rtol=1e-5, err_msg=name)  # the dense ulps feed back
        assert trainer.embedding.collection.sizes() == ref_trainer.embedding.collection.sizes()
        assert trainer.step == 6
    finally:
        server.stop()


def test_cluster_collection_rejects_bad_batches_before_pushing():
    server = sc.Server(port=0)
    try:
        coll = sc.EmbeddingCollection({"t": sc.TableConfig(dim=2)}, server=sc.connect([server.endpoint]))
        with pytest.raises(ValueError, match="offsets"):
            coll.prepare({"t": (np.arange(3), np.array([0, 4]))})
        with pytest.raises(KeyError, match="unknown table"):
            coll.prepare({"u": (np.arange(3), np.array([0, 3]))})
        batch = {"t": (np.arange(3), np.array([0, 1, 3]))}
        before = coll.forward(batch)["t"]
        with pytest.raises(ValueError, match="NaN"):
            coll.backward(batch, {"t": np.full((2, 2), np.nan, np.float32)})
        np.testing.assert_array_equal(coll.forward(batch)["t"], before)
        assert coll.step == 0
    finally:
        server.stop()


SEQ_DATA = SyntheticConfig.w2(num_groups=3, group_names=("history", "user", "ad"), num_user_groups=2,
                              vocab_size=300, min_bag=0, max_bag=7, weight_std=0.2, samples_per_view=4,
                              batch_size=48, seed=11)
SEQ_TABLES = {"history": sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.1), pooling="none"),
              "user": sc.TableConfig(dim=4, optimizer=sc.SGD(lr=0.2), pooling="mean"),
              "ad": sc.TableConfig(dim=4, optimizer=sc.Adam(lr=0.01))}


class AttentionOverHistory(torch.nn.Module):
    """DIN's shape in small: the ad attends over the history sequence (padding masked out)."""

    def __init__(self, dim=4):
        super().__init__()
        torch.manual_seed(0)
        self.score = torch.nn.Linear(2 * dim, 1)
        self.top = torch.nn.Linear(3 * dim, 1)

    def forward(self, pooled, dense=None):
        history, lengths = pooled["history"]
        ad = pooled["ad"]
        scores = self.score(torch.cat([history, ad.unsqueeze(1).expand_as(history)], dim=2)).squeeze(2)
        mask = torch.arange(history.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        interest = (scores.sigmoid() * mask).unsqueeze(2).mul(history).sum(1)
        return self.top(torch.cat([interest, pooled["user"], ad], dim=1)).squeeze(1)


def test_sequence_group_against_a_cluster_matches_embedded():
    """A DIN-like model whose history group uses pooling "none", trained with sample
    compression: the cluster gives the embedded run's dense weights and rows bit for bit (the
    worker scales and sums duplicate ids' gradients as the engine's fused update does)."""
    server = sc.Server(port=0, shards=2)
    try:
        runs = []
        for where in ({}, {"server": sc.connect([server.endpoint])}):
            model = AttentionOverHistory()
            trainer = sc.Trainer(SyntheticData(SEQ_DATA, num_samples=5 * SEQ_DATA.batch_size, compressed=True),
                                 model, SEQ_TABLES, seed=5, model_input="dict", progress=False,
                                 deterministic=True, **where)
            trainer.fit()
            runs.append((trainer, model))
        (ref_trainer, ref_model), (trainer, model) = runs
        assert trainer.step == ref_trainer.step == 5
        for (name, p), q in zip(ref_model.named_parameters(), model.parameters()):
            np.testing.assert_array_equal(q.detach().numpy(), p.detach().numpy(), err_msg=name)
        ids = np.arange(SEQ_DATA.vocab_size, dtype=np.int64)
        for name in SEQ_TABLES:
            want = ref_trainer.embedding.collection.lookup(name, ids)
            got = trainer.embedding.collection.lookup(name, ids)
            np.testing.assert_array_equal(got, want, err_msg=name)
        assert trainer.embedding.collection.sizes() == ref_trainer.embedding.collection.sizes()
    finally:
        server.stop()


@pytest.mark.parametrize("weighted", [False, True])
def test_cluster_sequence_outputs_and_updates_match_embedded(weighted):
    """Pooling "none" straight through the collections: padded [B, L_max, dim] outputs and
    lengths equal, and after backward steps with per-position gradients (duplicates, empty
    bags, negative and huge ids) every row equals the embedded engine's."""
    rng = np.random.default_rng()
    tables = {"seq": sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1), pooling="none")}
    server = sc.Server(port=0, shards=2)
    try:
        embedded = sc.EmbeddingCollection(tables, seed=3)
        cluster = sc.EmbeddingCollection(tables, seed=3, server=sc.connect([server.endpoint]))
        vocab = np.array([0, 1, -5, 2**62, -2**63, 7, 8, 9, 10, 11], np.int64)
        for _ in range(4):
            lengths = rng.integers(0, 6, size=9)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            group = [rng.choice(vocab, size=offsets[-1]), offsets]
            if weighted:
                group.append(rng.uniform(0.5, 2.0, size=offsets[-1]).astype(np.float32))
            batch = {"seq": tuple(group)}
            (want, want_len), (got, got_len) = embedded.forward(batch)["seq"], cluster.forward(batch)["seq"]
            assert got.shape == (9, lengths.max(), 3)
            np.testing.assert_array_equal(got_len, want_len)
            np.testing.assert_array_equal(got, want)
            grad = {"seq": rng.standard_normal(want.shape).astype(np.float32)}
            embedded.backward(batch, grad)
            cluster.backward(batch, grad)
        rows = cluster.lookup("seq", vocab)
        want = embedded.lookup("seq", vocab)
        np.testing.assert_array_equal(rows, want)
        with pytest.raises(TypeError, match="gradient of group 'seq' must have 3 dimension"):  # as embedded
            cluster.backward(batch, {"seq": np.zeros((9, 3), np.float32)})
    finally:
        server.stop()


SYNC_WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    import sparsecore as sc
    from sparsecore.data import SyntheticConfig, SyntheticData
    sys.path.insert(0, {tests!r})
    from test_ps_trainer import DATA, TABLES, mlp
    addrs, rank, store, out = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    model = mlp(seed=rank)  # different on purpose: sync_dense starts every worker from rank 0's
    handles = sc.server.sync_dense(model)
    cluster = sc.connect(addrs, worker=rank, num_workers=2, timeout=60)
    source = SyntheticData(SyntheticConfig(**{{**DATA.__dict__, "seed": 100 + rank}}))
    trainer = sc.Trainer(source, model, TABLES, seed=9, progress=False, server=cluster)
    trainer.fit(steps=4)
    torch.save(model.state_dict(), out)
    dist.barrier()  # neither rank closes its gloo pairs while the other may still use them
    dist.destroy_process_group()
""")


def test_two_synchronous_workers_share_dense_weights_over_gloo(tmp_path):
    servers = [start_server_process("--shards", 2, "--server-index", i, "--num-servers", 2) for i in range(2)]
    try:
        addrs = ",".join(a for _, a in servers)
        script = SYNC_WORKER.format(tests=os.path.dirname(os.path.abspath(__file__)))
        outs = [str(tmp_path / f"model{r}.pt") for r in range(2)]
        workers = [subprocess.Popen([sys.executable, "-c", script, addrs, str(r), str(tmp_path / "store"), outs[r]],
                                    env=_env()) for r in range(2)]
        for w in workers:
            assert w.wait(120) == 0
        a, b = (torch.load(o) for o in outs)
        start = mlp(seed=0).state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), name
        assert any(not torch.equal(a[n], start[n]) for n in a)  # it trained
        cluster = sc.connect(addrs.split(","))
        coll = sc.EmbeddingCollection(TABLES, seed=9, server=cluster)
        assert all(rows > 0 for rows in coll.sizes().values())
    finally:
        for p, _ in servers:
            stop(p)


READER_WORKER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import sparsecore as sc
    from sparsecore.data import SyntheticConfig, SyntheticData
    addr, stop_after = sys.argv[1], int(sys.argv[2])
    ps = sc.connect([addr], timeout=30)
    # Column "seen": one row per batch (keyed by its first sample), +1 each time it is trained on.
    ps.create_table("seen", sc.TableConfig(dim=1, optimizer=sc.SGD(lr=1.0), init=sc.Zeros()), seed=0)
    source = SyntheticData(SyntheticConfig(num_groups=1, vocab_size=100, batch_size=8), num_samples=80)
    state = ps.kv_get("reader/0")
    if state is not None:
        source.load_state_dict(state)
    steps = 0
    while True:
        first = source.position
        batch = source.next_batch()
        if batch is None:
            break
        ps.push("seen", np.array([first], np.int64), np.array([[-1.0]], np.float32))
        ps.kv_put("reader/0", source.state_dict())  # the position after the batch just applied
        steps += 1
        print(steps, flush=True)
        if steps == stop_after:
            time.sleep(600)  # killed here
""")


def test_worker_killed_and_restarted_resumes_its_reader_position():
    server = sc.Server(port=0)
    try:
        first = subprocess.Popen([sys.executable, "-c", READER_WORKER, server.endpoint, "4"], env=_env(),
                                 stdout=subprocess.PIPE, text=True)
        for expect in range(1, 5):
            assert first.stdout.readline().strip() == str(expect)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = subprocess.run([sys.executable, "-c", READER_WORKER, server.endpoint, "0"], env=_env(),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        assert second.stdout.split() == [str(i) for i in range(1, 7)]  # the 6 batches left of 10
        ps = server.client()
        ps.create_table("seen", sc.TableConfig(dim=1, optimizer=sc.SGD(lr=1.0), init=sc.Zeros()), seed=0)
        seen = ps.lookup("seen", np.arange(0, 80, 8, dtype=np.int64))
        np.testing.assert_array_equal(seen[:, 0], np.ones(10, np.float32))  # each batch exactly once
    finally:
        server.stop()
