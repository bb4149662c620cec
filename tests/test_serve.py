"""sparsecore serve: a model directory served over RPC (sparsecore.PredictClient) and HTTP/1.1
JSON by a real server process, equal to sparsecore.Predictor; bad requests, oversized bodies,
slow clients and wrong tokens refused without holding up the others; requests of many
connections batched; deadlines; new deltas served."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore.data import SyntheticConfig, SyntheticData  # noqa: E402
from sparsecore.torch import mlp  # noqa: E402

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(sc.__file__)))
TOKEN = "serve-test-token"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONFAULTHANDLER"] = "1"
    env.pop("SPARSECORE_TOKEN", None)
    return env


class ServeProcess:
    def __init__(self, model, *args):
        self.p = subprocess.Popen(
            [sys.executable, "-c", "import sys; from sparsecore.serve import main; sys.exit(main(sys.argv[1:]))",
             "--model", str(model), "--http-port", "0", *map(str, args)],
            stdout=subprocess.PIPE, env=_env(), text=True)
        line = self.p.stdout.readline()
        assert line.startswith("listening on"), line
        self.endpoint = line.split()[2]
        line = self.p.stdout.readline()
        assert line.startswith("http on"), line
        self.http_port = int(line.rsplit(":", 1)[1])

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A trained 3-feature model exported to a directory; its config and a trainer to make deltas."""
    cfg = SyntheticConfig.w2(num_groups=3, vocab_size=300, zipf_exponent=1.2, batch_size=64, seed=77,
                             num_user_groups=0, samples_per_view=1)
    tables = {g: sc.TableConfig(dim=4, optimizer=sc.Adagrad(lr=0.05)) for g in cfg.names()}
    trainer = sc.Trainer(SyntheticData(cfg, num_samples=64 * 30), mlp(4 * len(tables), [6]), tables, progress=False)
    trainer.fit(8)
    path = tmp_path_factory.mktemp("serve") / "model"
    version = sc.export_model(path, trainer, trainer.model)
    return {"path": path, "cfg": cfg, "trainer": trainer, "version": version}


@pytest.fixture(scope="module")
def server(model):
    s = ServeProcess(model["path"], "--token", TOKEN, "--http-timeout", "1.5", "--max-body-bytes", 4096)
    yield s
    assert s.stop() == 0


def held_batch(model, n, start=0):
    return SyntheticData(model["cfg"], start=(1 << 30) + start, num_samples=(1 << 30) + start + n).next_batch(n)


def json_body(batch, features):
    out = {}
    for name in features:
        ids, offsets = batch.sparse[name][:2]
        out[name] = [ids[offsets[b]:offsets[b + 1]].tolist() for b in range(len(offsets) - 1)]
    return {"features": out}


def http_call(port, method, path, body=None, token=TOKEN, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
        body = body if isinstance(body, (bytes, str)) else json.dumps(body)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def test_rpc_and_http_predictions_equal_the_predictor(model, server):
    reference = sc.Predictor(model["path"])
    batch = held_batch(model, 40)
    expected = reference.predict(batch)
    client = sc.PredictClient(server.endpoint, token=TOKEN, timeout=10)
    assert client.features == reference.features
    np.testing.assert_array_equal(client.predict(batch), expected)
    status, data = http_call(server.http_port, "POST", "/v1/predict", json_body(batch, reference.features))
    assert status == 200, data
    answer = json.loads(data)
    assert answer["version"] == model["version"]
    # the JSON numbers carry 9 significant digits: float32 exactly
    np.testing.assert_array_equal(np.asarray(answer["logits"], np.float32), expected)


def test_health_and_metrics(model, server):
    status, data = http_call(server.http_port, "GET", "/healthz", token=None)
    assert status == 200 and json.loads(data) == {"status": "ok", "version": model["version"]}
    status, data = http_call(server.http_port, "GET", "/metrics")
    assert status == 200
    text = data.decode()
    assert f"sparsecore_serve_model_version {model['version']}" in text
    assert "# TYPE sparsecore_serve_batches_total counter" in text


def test_wrong_token_is_refused_on_rpc_and_http(model, server):
    with pytest.raises(sc.RpcAuthError):
        sc.PredictClient(server.endpoint, token="wrong")
    with pytest.raises(sc.RpcAuthError):
        sc.PredictClient(server.endpoint)
    body = json_body(held_batch(model, 2), model["cfg"].names())
    for token in (None, "wrong", TOKEN + "x", ""):
        status, _ = http_call(server.http_port, "POST", "/v1/predict", body, token=token)
        assert status == 401
        status, _ = http_call(server.http_port, "GET", "/metrics", token=token)
        assert status == 401
    assert http_call(server.http_port, "POST", "/v1/predict", body)[0] == 200


@pytest.mark.parametrize("body, match", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"features": 3}', "features"),
    (b'{"features": {}}', "missing"),
    (b'{"features": {"nope": [[1]]}}', "no feature 'nope'"),
    (b'{"features": {}, "extra": 1}', "unknown field 'extra'"),
    (b'{"features": {"f0": [[1.5]], "f1": [[1]], "f2": [[1]]}}', "integers"),
    (b'{"features": {"f0": [[1]], "f1": [[1], [2]], "f2": [[1]]}}', "samples"),
    (b'{"features": {"f0": [1], "f1": [[1]], "f2": [[1]]}}', "id lists"),
    (b'{"features": {"f0": [[1]], "f1": [[1]], "f2": [[1]]}, "weights": {"f0": [[1, 2]]}}', "match its ids"),
    (b'{"features": {"f0": [[1]], "f1": [[1]], "f2": [[1]]}, "dense": [[1]]}', "no dense input"),
    (b'{"features": {"f0": [[1]], "f1": [[1]], "f2": [[1]]}, "timeout_ms": -1}', "timeout_ms"),
    (b'[' * 200 + b']' * 200, "malformed JSON"),
])
def test_malformed_json_is_answered_400_naming_the_problem(model, server, body, match):
    assert model["cfg"].names() == ["f0", "f1", "f2"]
    status, data = http_call(server.http_port, "POST", "/v1/predict", body)
    assert status == 400, data
    assert match in json.loads(data)["error"]


def test_rpc_requests_the_model_cannot_take_are_value_errors(model, server):
    client = sc.PredictClient(server.endpoint, token=TOKEN, timeout=10)
    batch = held_batch(model, 4)
    bad = dict(batch.sparse)
    ids, offsets = bad["f1"][:2]
    bad["f1"] = (ids, offsets.copy())
    bad["f1"][1][-1] += 1  # offsets end past the ids
    with pytest.raises(ValueError, match="f1"):
        client.predict(bad)
    with pytest.raises(ValueError, match="dense"):
        client.predict(batch, dense=np.zeros((4, 3), np.float32))
    np.testing.assert_array_equal(client.predict(batch), sc.Predictor(model["path"]).predict(batch))


def raw_http(port, data, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    return s


def read_all(s):
    chunks = []
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_an_oversized_body_is_refused_before_it_is_sent(server):
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n").encode()
    s = raw_http(server.http_port, head)  # no body at all: the answer must not wait for it
    answer = read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    status, _ = http_call(server.http_port, "POST", "/v1/predict", b"x" * 5000)
    assert status == 413


def test_a_slow_client_holds_up_no_one_and_is_dropped_after_its_deadline(model, server):
    body = json.dumps(json_body(held_batch(model, 3), model["cfg"].names())).encode()
    request = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    slow = [raw_http(server.http_port, request[:len(request) // 2]) for _ in range(3)]
    silent = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    # others are served meanwhile, over HTTP and RPC
    for _ in range(3):
        assert http_call(server.http_port, "POST", "/v1/predict", body)[0] == 200
    sc.PredictClient(server.endpoint, token=TOKEN, timeout=10).predict(held_batch(model, 3))
    # the server closes the half-sent requests once --http-timeout passes (recv sees EOF)
    for s in slow + [silent]:
        s.settimeout(20)
        assert read_all(s) == b""
        s.close()
    status, data = http_call(server.http_port, "GET", "/metrics")
    timeouts = [line for line in data.decode().splitlines() if line.startswith("sparsecore_http_timeouts_total")]
    assert int(timeouts[0].split()[1]) >= 4


def test_concurrent_clients_from_several_threads(model, server):
    reference = sc.Predictor(model["path"])
    batches = [held_batch(model, 1 + i % 5, start=100 * i) for i in range(16)]
    expected = [reference.predict(b) for b in batches]
    client = sc.PredictClient(server.endpoint, token=TOKEN, timeout=30)  # one connection, shared
    errors = []

    def worker(t):
        try:
            own = sc.PredictClient(server.endpoint, token=TOKEN, timeout=30)
            for k in range(12):
                i = (t * 5 + k) % len(batches)
                how = k % 3
                if how == 0:
                    got = client.predict(batches[i])
                elif how == 1:
                    got = own.predict(batches[i])
                else:
                    status, data = http_call(server.http_port, "POST", "/v1/predict",
                                             json_body(batches[i], reference.features))
                    assert status == 200, data
                    got = np.asarray(json.loads(data)["logits"], np.float32)
                np.testing.assert_array_equal(got, expected[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors


def test_requests_of_different_connections_share_a_batch(model):
    # max_batch is the sum of the four requests and the wait is long: the batch closes only
    # once every one of them has arrived, so they are predicted together, once.
    s = ServeProcess(model["path"], "--max-batch", 10, "--max-wait-us", 9_000_000, "--threads", 1)
    try:
        reference = sc.Predictor(model["path"])
        batches = [held_batch(model, n, start=1000 * n) for n in (1, 2, 3, 4)]
        results = {}

        def rpc(i):
            results[i] = sc.PredictClient(s.endpoint, timeout=60).predict(batches[i])

        def over_http(i):
            status, data = http_call(s.http_port, "POST", "/v1/predict", json_body(batches[i], reference.features),
                                     timeout=60)
            assert status == 200, data
            results[i] = np.asarray(json.loads(data)["logits"], np.float32)

        threads = [threading.Thread(target=f, args=(i,)) for i, f in enumerate([rpc, over_http, rpc, over_http])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i, b in enumerate(batches):
            np.testing.assert_array_equal(results[i], reference.predict(b))
        assert metric(s, "sparsecore_serve_batches_total") == 1
        assert metric(s, "sparsecore_serve_samples_total") == 10
    finally:
        assert s.stop() == 0


def metric(s, name):
    status, data = http_call(s.http_port, "GET", "/metrics", token=None)
    assert status == 200
    return int(dict(line.split() for line in data.decode().splitlines() if not line.startswith("#"))[name])


def test_a_request_past_its_deadline_is_answered_without_running(model):
    # a lone request waits up to 9 s for companions; its deadline comes first
    s = ServeProcess(model["path"], "--max-batch", 1000, "--max-wait-us", 9_000_000)
    try:
        batch = held_batch(model, 2)
        with pytest.raises(sc.RpcTimeoutError):
            sc.PredictClient(s.endpoint).predict(batch, timeout=0.2)
        # a deadline closes the batch it waits in, companions included: let the server drop the
        # RPC request first, so that the next one waits alone again
        for _ in range(600):
            if metric(s, "sparsecore_serve_deadline_exceeded_total") == 1:
                break
            time.sleep(0.05)
        assert metric(s, "sparsecore_serve_deadline_exceeded_total") == 1
        body = dict(json_body(batch, model["cfg"].names()), timeout_ms=200)
        status, data = http_call(s.http_port, "POST", "/v1/predict", body, token=None, timeout=60)
        assert status == 504 and "deadline" in json.loads(data)["error"]
        assert metric(s, "sparsecore_serve_deadline_exceeded_total") == 2
        assert metric(s, "sparsecore_serve_batches_total") == 0
    finally:
        assert s.stop() == 0


def test_a_delta_exported_while_serving_is_served(model, tmp_path):
    import shutil

    path = tmp_path / "model"
    shutil.copytree(model["path"], path)
    s = ServeProcess(path, "--poll-interval", 0.1)
    try:
        client = sc.PredictClient(s.endpoint, timeout=10)
        assert client.version == model["version"]
        trainer = model["trainer"]
        trainer.fit(3)
        new_version = trainer.embedding.collection.export_delta(path / "stream", since=model["version"])
        deadline = time.monotonic() + 30
        while client.version != new_version and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.version == new_version
        batch = held_batch(model, 20)
        np.testing.assert_array_equal(client.predict(batch), sc.Predictor(path).predict(batch))
    finally:
        assert s.stop() == 0


def test_cli_help_and_bad_arguments(tmp_path, capsys):
    from sparsecore import cli

    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--port", "--http-port", "--token-file", "--max-batch", "--max-wait-us", "--threads"):
        assert flag in out
    assert cli.main(["serve", "--model", str(tmp_path / "absent")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["serve", "--model", str(tmp_path / "empty")]) != 0
    assert "sparsecore serve: error" in capsys.readouterr().err


def test_raw_values_are_hashed_as_the_readers_hash_them(model, server, tmp_path):
    from sparsecore.data import hash_features

    names = model["cfg"].names()
    path = tmp_path / "model"
    trainer = model["trainer"]
    # f0 is hashed from two columns, the others from one column of their own name
    sc.export_model(path, trainer, trainer.model, features={names[0]: ["user", "user_city"]})
    p = sc.Predictor(path)
    assert p.columns == {names[0]: ["user", "user_city"], names[1]: [names[1]], names[2]: [names[2]]}
    raw = {"user": [["u1", "u2"], "u3", None, []], "user_city": [["berlin"], [], ["", "paris"], [7]],
           names[1]: [[5, "x"], ["y"], [], [12345678901234]], names[2]: ["a", "b", "c", "d"]}

    def ids_of(columns, b):
        out = []
        for c in columns:
            entry = raw[c][b]
            values = [v for v in (entry if isinstance(entry, list) else [entry]) if v is not None and v != ""]
            out.extend(hash_features(c, np.array(values, dtype=object)) if values else [])
        return out

    expected_batch = {}
    for f, columns in p.columns.items():
        bags = [ids_of(columns, b) for b in range(4)]
        expected_batch[f] = (np.array([i for bag in bags for i in bag], np.int64),
                             np.cumsum([0] + [len(bag) for bag in bags]).astype(np.int64))
    expected = p.predict(expected_batch)
    np.testing.assert_array_equal(p.predict(raw=raw), expected)
    # mixed: one feature as ids, the others raw
    mixed = {k: v for k, v in raw.items() if k != names[2]}
    np.testing.assert_array_equal(p.predict({names[2]: expected_batch[names[2]]}, raw=mixed), expected)
    with pytest.raises(ValueError, match="only"):
        p.predict(raw={"user": raw["user"], names[1]: raw[names[1]], names[2]: raw[names[2]]})
    with pytest.raises(ValueError, match="no raw columns"):
        p.predict(raw={**raw, "nope": [1, 2, 3, 4]})
    with pytest.raises(TypeError):
        p.predict(raw={**raw, names[2]: [1.5, 2.0, 3.0, 4.0]})
    # the server hashes raw JSON values the same way; the client hashes before sending
    s = ServeProcess(path)
    try:
        client = sc.PredictClient(s.endpoint, timeout=10)
        assert client.columns == p.columns
        np.testing.assert_array_equal(client.predict(raw=raw), expected)
        status, data = http_call(s.http_port, "POST", "/v1/predict", {"raw": raw}, token=None)
        assert status == 200, data
        np.testing.assert_array_equal(np.asarray(json.loads(data)["logits"], np.float32), expected)
        for body, match in [({"raw": {**raw, names[2]: [1.5, 2, 3, 4]}}, "strings or integers"),
                            ({"raw": {"user": raw["user"]}}, "missing"),
                            ({"raw": raw, "features": {names[2]: [[1]] * 4}}, "both"),
                            ({"raw": {**raw, "nope": [1, 2, 3, 4]}}, "no raw column 'nope'"),
                            ({"raw": {**raw, "user": [["u"]] * 3}}, "samples")]:
            status, data = http_call(s.http_port, "POST", "/v1/predict", body, token=None)
            assert status == 400 and match in json.loads(data)["error"], data
    finally:
        assert s.stop() == 0
