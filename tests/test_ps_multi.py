"""Several tables in one request per server shard (``_core.PsClient.pull_tables`` and
``push_tables``) against real ``sparsecore server`` processes: the same rows as the single-table
calls bit for bit, synchronous workers equal to the per-table path, and one request per shard
per call in the servers' stats."""

import threading

import numpy as np
import pytest

import sparsecore as sc
from test_ps import start_server_process, stop

TABLES = {
    "a": sc.TableConfig(dim=3, optimizer=sc.Adagrad(lr=0.1)),
    "b": sc.TableConfig(dim=1, optimizer=sc.Adam(lr=0.01)),
    "c": sc.TableConfig(dim=18, optimizer=sc.SGD(lr=0.5)),
}


def start_cluster(num_servers, shards):
    procs = [start_server_process("--shards", shards, "--server-index", i, "--num-servers", num_servers)
             for i in range(num_servers)]
    return procs, [addr for _, addr in procs]


def connect(addrs, **kwargs):
    ps = sc.connect(addrs, timeout=60, **kwargs)
    for name, cfg in TABLES.items():
        ps.create_table(name, cfg, seed=7)
    return ps


def step_ids(rng, n=200):
    ids = {name: np.unique(rng.integers(-300, 300, n)).astype(np.int64) for name in TABLES}
    ids["a"] = np.concatenate([ids["a"], np.array([2**63 - 1, -2**63], np.int64)])
    return ids


def requests(ps, counter):
    return sum(s[counter] for s in ps.stats())


@pytest.mark.parametrize("num_servers,shards", [(1, 1), (2, 2)])
def test_multi_table_calls_equal_single_table_calls(rng, num_servers, shards):
    clusters = [start_cluster(num_servers, shards) for _ in range(2)]
    try:
        multi, single = (connect(addrs) for _, addrs in clusters)
        for step in range(5):
            ids = step_ids(rng)
            if step == 2:
                ids["b"] = ids["b"][:0]  # an empty table in the request
            rows = multi._c.pull_tables([(name, ids[name]) for name in TABLES], step % 2 == 0)
            for name, got in zip(TABLES, rows):
                np.testing.assert_array_equal(got, single.lookup(name, ids[name], insert=step % 2 == 0))
            grads = {name: rng.standard_normal((ids[name].size, cfg.dim)).astype(np.float32)
                     for name, cfg in TABLES.items()}
            multi._c.push_tables([(name, ids[name], grads[name]) for name in TABLES], step)
            for name in TABLES:
                single.push(name, ids[name], grads[name], step=step)
            for name in TABLES:
                np.testing.assert_array_equal(multi.lookup(name, ids[name]), single.lookup(name, ids[name]))
        assert [s["tables"] for s in multi.stats()] == [s["tables"] for s in single.stats()]
    finally:
        for procs, _ in clusters:
            for p, _ in procs:
                stop(p)


def test_one_request_per_shard_per_multi_table_call(rng):
    procs, addrs = start_cluster(2, 2)
    try:
        ps = connect(addrs)
        ids = {name: np.arange(1000, dtype=np.int64) for name in TABLES}  # every shard owns some
        pulls, pushes = requests(ps, "pull_requests"), requests(ps, "push_requests")
        ps._c.pull_tables([(name, ids[name]) for name in TABLES], True)
        assert requests(ps, "pull_requests") - pulls == 4
        one = np.array([5], np.int64)
        ps._c.pull_tables([(name, one) for name in TABLES], True)
        assert requests(ps, "pull_requests") - pulls == 5  # only the owner of id 5
        grads = [(name, ids[name], np.ones((1000, cfg.dim), np.float32)) for name, cfg in TABLES.items()]
        ps._c.push_tables(grads, 0)
        assert requests(ps, "push_requests") - pushes == 4
        ps._c.push_tables([(name, one, np.ones((1, cfg.dim), np.float32)) for name, cfg in TABLES.items()], 1)
        assert requests(ps, "push_requests") - pushes == 8  # every shard, so each table's step advances alike
    finally:
        for p, _ in procs:
            stop(p)


def test_synchronous_workers_multi_table_equal_the_per_table_path(rng):
    clusters = [start_cluster(1, 2) for _ in range(2)]
    try:
        multi = [connect(clusters[0][1], worker=w, num_workers=2) for w in range(2)]
        single = [connect(clusters[1][1], worker=w, num_workers=2) for w in range(2)]
        for step in range(4):
            work = []
            for _ in range(2):
                ids = step_ids(rng, 120)
                work.append({name: (ids[name], rng.standard_normal((ids[name].size, cfg.dim)).astype(np.float32))
                             for name, cfg in TABLES.items()})
            errors = []

            def run(w):
                try:
                    multi[w]._c.push_tables([(name, *work[w][name]) for name in TABLES], step)
                    for name in TABLES:
                        single[w].push(name, *work[w][name], step=step)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)
            other = threading.Thread(target=run, args=(1,))
            other.start()
            run(0)
            other.join(60)
            assert not other.is_alive() and not errors, errors
        probe = np.arange(-300, 300, dtype=np.int64)
        for name in TABLES:
            np.testing.assert_array_equal(multi[0].lookup(name, probe), single[0].lookup(name, probe))
    finally:
        for procs, _ in clusters:
            for p, _ in procs:
                stop(p)


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("remote", [False, True])
def test_bad_multi_table_calls_are_refused_and_change_nothing(remote, shards):
    server = sc.Server(port=0, shards=shards) if remote else sc.Server(shards=shards)
    try:
        ps = server.client()
        for name, cfg in TABLES.items():
            ps.create_table(name, cfg, seed=7)
        ids = np.arange(10, dtype=np.int64)
        before = {name: ps.lookup(name, ids, insert=True) for name in TABLES}
        ok = {name: np.ones((10, cfg.dim), np.float32) for name, cfg in TABLES.items()}
        with pytest.raises(ValueError, match="'a'"):
            ps._c.push_tables([("a", np.array([1, 2, 1], np.int64), np.ones((3, 3), np.float32))], 0)
        with pytest.raises(ValueError, match="more than one slice"):
            ps._c.push_tables([("a", ids, ok["a"]), ("a", ids, ok["a"])], 0)
        with pytest.raises(KeyError):
            ps._c.push_tables([("a", ids, ok["a"]), ("nope", ids, ok["a"])], 0)
        nan = ok["c"].copy()
        nan[3, 4] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            ps._c.push_tables([("a", ids, ok["a"]), ("c", ids, nan)], 0)
        if shards == 1:  # a shard applies its part all or none; across shards the parts are apart
            overflow = np.full((10, 3), 1e20, np.float32)  # g^2 overflows the Adagrad state of table a
            with pytest.raises(ValueError, match="non-finite"):
                ps._c.push_tables([("c", ids, ok["c"]), ("b", ids, ok["b"]), ("a", ids, overflow)], 0)
        for name in TABLES:
            np.testing.assert_array_equal(ps.lookup(name, ids), before[name])
    finally:
        server.stop()


def test_a_synchronous_multi_table_push_waits_for_every_table_and_fails_with_any():
    procs, addrs = start_cluster(1, 1)
    try:
        w0, w1 = (connect(addrs, worker=w, num_workers=2) for w in range(2))
        ids = np.arange(6, dtype=np.int64)
        grads = {name: np.ones((6, cfg.dim), np.float32) for name, cfg in TABLES.items()}
        outcome = {}

        def push_two(step):
            try:
                w0._c.push_tables([("a", ids, grads["a"]), ("b", ids, grads["b"])], step)
                outcome[step] = "done"
            except Exception as e:  # noqa: BLE001 - the test inspects it
                outcome[step] = e
        # Answered once both of its tables completed the step, not before.
        waiting = threading.Thread(target=push_two, args=(0,))
        waiting.start()
        w1.push("a", ids, grads["a"], step=0)
        waiting.join(1.0)
        assert waiting.is_alive() and 0 not in outcome
        w1.push("b", ids, grads["b"], step=0)
        waiting.join(60)
        assert outcome.get(0) == "done"
        # Failed as soon as one of its tables' step is aborted (worker 1 pushes another step
        # of table b: it restarted or rolled back), even though table a completes.
        waiting = threading.Thread(target=push_two, args=(1,))
        waiting.start()
        w1.push("a", ids, grads["a"], step=1)
        failing = threading.Thread(target=lambda: w1.push("b", ids, grads["b"], step=7))
        failing.start()
        waiting.join(60)
        assert isinstance(outcome.get(1), sc.RpcStepAbortedError), outcome
        assert "'b'" in str(outcome[1])
        w0.push("b", ids, grads["b"], step=7)  # completes worker 1's step 7 of table b
        failing.join(60)
        assert not failing.is_alive()
    finally:
        for p, _ in procs:
            stop(p)
