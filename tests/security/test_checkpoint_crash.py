"""Checkpoints survive SIGKILL at any instant. Twenty rounds each: a Trainer process that
checkpoints after every step (resuming from its own checkpoint each round), and a
`sparsecore server` process saving snapshots with and without overwrite, are killed at a
random instant; every time the newest complete checkpoint loads (a killed server starts
again from it) and matches, bit for bit, what was saved."""

import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest

import sparsecore as sc

sys.path.insert(0, os.path.dirname(__file__))
from checkpoint_support import child_env, start_server, stop  # noqa: E402

ROUNDS = 20

TRAINER_CHILD = textwrap.dedent("""
    import logging, os, sys
    import numpy as np, torch
    import sparsecore as sc
    from sparsecore.data import SyntheticConfig, SyntheticData
    from sparsecore.torch import mlp
    from sparsecore.trainer import Trainer

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    ckpt, refs = sys.argv[1], sys.argv[2]
    cfg = SyntheticConfig.w2(num_groups=3, num_user_groups=1, vocab_size=300, min_bag=1, max_bag=4,
                             samples_per_view=4, batch_size=200, seed=3)
    torch.manual_seed(0)
    names = cfg.names()
    model = mlp(4 * len(names), [8])
    trainer = Trainer(SyntheticData(cfg), model, {n: sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.2))
                                                  for n in names},
                      dense_optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), progress=False, log_every=0)
    trainer.resume(ckpt)
    while True:
        trainer.fit(1)
        # What the checkpoint of this step must hold, written before the save starts.
        state = {f"dense/{k}": v.numpy() for k, v in trainer.model.state_dict().items()}
        for n in names:
            e = trainer.embedding.collection.export(n)
            order = np.argsort(e["keys"])
            state.update({f"emb/{n}/{k}": v[order] for k, v in e.items()})
        tmp = os.path.join(refs, f".{trainer.step}.npz")
        np.savez(tmp, **state)
        os.replace(tmp, os.path.join(refs, f"{trainer.step}.npz"))
        trainer.save(ckpt, overwrite=True)
        print(f"saved {trainer.step}", flush=True)
""")


def saved_state(ckpt):
    """The trainer checkpoint at `ckpt` read back as the child wrote its reference."""
    where = sc._core.committed_directory(str(ckpt))
    import json

    import torch

    with open(os.path.join(where, "trainer.json")) as f:
        step = json.load(f)["step"]
    dense = torch.load(os.path.join(where, "dense.pt"), weights_only=False)
    state = {f"dense/{k}": v.numpy() for k, v in dense["model"].items()}
    emb = sc.EmbeddingCollection.load(os.path.join(where, "embedding"))
    for n in emb.names:
        e = emb.export(n)
        order = np.argsort(e["keys"])
        state.update({f"emb/{n}/{k}": v[order] for k, v in e.items()})
    return step, state


def test_trainer_checkpoints_survive_sigkill_at_random_instants(tmp_path):
    pytest.importorskip("torch")
    ckpt, refs = tmp_path / "ckpt", tmp_path / "refs"
    refs.mkdir()
    rng = random.Random(os.environ.get("SPARSECORE_TEST_SEED"))
    acked = 0
    for round_ in range(ROUNDS):
        err_file = tempfile.TemporaryFile("w+")  # a file, not a pipe the child could fill
        child = subprocess.Popen([sys.executable, "-c", TRAINER_CHILD, str(ckpt), str(refs)], env=child_env(),
                                 stdout=subprocess.PIPE, stderr=err_file, text=True)
        try:
            line = child.stdout.readline()
            if not line.startswith("saved"):
                child.wait(30)
                err_file.seek(0)
                pytest.fail(f"trainer child failed: {line!r}\n{err_file.read()[-3000:]}")
            acked = max(acked, int(line.split()[1]))
            time.sleep(rng.uniform(0, 0.4))
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        err_file.seek(0)
        err = err_file.read()
        for line in out.splitlines():
            acked = max(acked, int(line.split()[1]))
        if round_ > 0:
            assert "resumed from checkpoint" in err, err[-3000:]
        step, state = saved_state(ckpt)
        assert step >= acked, (step, acked)
        with np.load(refs / f"{step}.npz") as ref:
            assert set(ref.files) == set(state)
            for key in ref.files:
                np.testing.assert_array_equal(state[key], ref[key], err_msg=f"round {round_} step {step} {key}")


def test_server_snapshots_survive_sigkill_at_random_instants(tmp_path):
    snaps = tmp_path / "snaps"
    rng = random.Random(os.environ.get("SPARSECORE_TEST_SEED"))
    cfg = sc.TableConfig(dim=5, optimizer=sc.Adam(lr=0.05), shard_bits=3)
    ids = np.arange(-2000, 2000, dtype=np.int64) * 7919
    refs: dict[int, np.ndarray] = {}
    step = 0
    acked = -1
    proc, addr, _ = start_server("--shards", 2, "--snapshot-dir", snaps)
    port = addr.split(":")[1]
    try:
        for round_ in range(ROUNDS):
            ps = sc.connect([addr], timeout=30)
            ps.create_table("t", cfg, seed=4)
            overwrite = round_ % 2 == 1
            base = (round_ + 1) * 10**7
            stop_saving = threading.Event()
            acked_in_round = []

            def save_loop():
                nonlocal step
                grads = np.random.default_rng(round_)
                try:
                    while not stop_saving.is_set():
                        step += 1
                        ps.push("t", ids, grads.standard_normal((ids.size, 5)).astype(np.float32))
                        ps.kv_put("step", step)
                        refs[step] = ps.lookup("t", ids)
                        name = f"step-{base}" if overwrite else f"step-{base + step}"
                        ps.save(name, step=step, overwrite=overwrite)
                        acked_in_round.append(step)
                except (sc.RpcError, ConnectionError, OSError):
                    pass

            saver = threading.Thread(target=save_loop, daemon=True)
            saver.start()
            deadline = time.monotonic() + 30
            while not acked_in_round and time.monotonic() < deadline:
                time.sleep(0.005)
            assert acked_in_round, "no save completed"
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            stop_saving.set()
            saver.join(30)
            assert not saver.is_alive()
            acked = max([acked, *acked_in_round])
            proc, addr, line = start_server("--port", port, "--shards", 2, "--snapshot-dir", snaps)
            restored = int(line.split("restored step")[1])
            assert restored >= acked, (restored, acked)
            ps = sc.connect([addr], timeout=30)
            ps.create_table("t", cfg, seed=4)
            np.testing.assert_array_equal(ps.lookup("t", ids), refs[restored],
                                          err_msg=f"round {round_} step {restored}")
            assert ps.kv_get("step") == restored
            assert not [p for p in os.listdir(snaps) if p.startswith(".")]  # unfinished saves removed
    finally:
        stop(proc)
