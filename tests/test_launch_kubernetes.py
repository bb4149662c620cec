"""The Kubernetes manifests of deploy/kubernetes, read as the cluster would: the coordinator's
arguments parse with ``sparsecore coordinator``'s own parser, the servers' with ``sparsecore
server``'s and the workers' with ``python -m sparsecore.launch``'s; ports, replica counts, the
coordinator's address on servers and workers, the servers' advertised names, the rank and
worker count variables, the token Secret and the snapshot volume agree with each other and
with what the code reads."""

import argparse
import os
import re

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (it comes with the test extra)")

from sparsecore import launch, server  # noqa: E402
from sparsecore.cluster import coordinator  # noqa: E402
from sparsecore._token import ENV_VAR as TOKEN_VAR  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy", "kubernetes")


def documents():
    out = {}
    for name in sorted(os.listdir(DEPLOY)):
        if name.endswith(".yaml"):
            with open(os.path.join(DEPLOY, name)) as f:
                for doc in yaml.safe_load_all(f):
                    out[(doc["kind"], doc["metadata"]["name"] if "metadata" in doc else name)] = doc
    return out


DOCS = documents()
STATEFULSET = DOCS[("StatefulSet", "sparsecore-server")]
JOB = DOCS[("Job", "sparsecore-worker")]
SERVER_SERVICE = DOCS[("Service", STATEFULSET["spec"]["serviceName"])]
COORDINATOR_SET = DOCS[("StatefulSet", "sparsecore-coordinator")]
COORDINATOR_SERVICE = DOCS[("Service", COORDINATOR_SET["spec"]["serviceName"])]
COORDINATOR = COORDINATOR_SET["spec"]["template"]["spec"]["containers"][0]
SERVER = STATEFULSET["spec"]["template"]["spec"]["containers"][0]
WORKER = JOB["spec"]["template"]["spec"]["containers"][0]


def expand(args, container, extra=None):
    """``$(VAR)`` in arguments as the kubelet expands them from the container's environment
    (values from the downward API by ``extra``)."""
    values = {e["name"]: e.get("value") for e in container.get("env", [])}
    values.update(extra or {})

    def one(match):
        name = match.group(1)
        assert values.get(name) is not None, f"$({name}) names no variable with a value"
        return values[name]
    return [re.sub(r"\$\((\w+)\)", one, a) for a in args]


class _Parsed(Exception):
    pass


_PARSE_ARGS = argparse.ArgumentParser.parse_args


def parse_server_args(argv, monkeypatch, main=server.main):
    """The own parser of ``main`` (``sparsecore server``'s by default) on ``argv`` (nothing is
    started)."""
    seen = {}

    def capture(self, args=None, namespace=None):
        seen["args"] = _PARSE_ARGS(self, args, namespace)
        raise _Parsed
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed):
        main(argv)
    monkeypatch.undo()
    return seen["args"]


def coordinator_address():
    """The coordinator's address as the other pods reach it: its Service's name and port."""
    port = next(p["containerPort"] for p in COORDINATOR["ports"] if p["name"] == "rpc")
    return f"{COORDINATOR_SERVICE['metadata']['name']}:{port}"


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def mounts(pod_spec, container):
    """mount path -> the volume mounted there."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}


def assert_token_from_the_secret(path, pod_spec, container):
    directory, file = os.path.split(path)
    volume = mounts(pod_spec, container)[directory]
    assert volume["secret"]["secretName"] == "sparsecore-token"
    assert volume["secret"]["defaultMode"] & 0o077 == 0, "the token must be readable by its owner only"
    assert file == "token"  # kubectl create secret generic sparsecore-token --from-file=token=PATH
    assert TOKEN_VAR not in env_of(container), "the token comes from the file, not the environment"


def test_the_kustomization_names_every_manifest():
    kustomization = DOCS[("Kustomization", "kustomization.yaml")]
    files = sorted(n for n in os.listdir(DEPLOY) if n.endswith(".yaml") and n != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files


def test_servers_parse_and_agree_with_their_statefulset(monkeypatch):
    replicas = STATEFULSET["spec"]["replicas"]
    assert SERVER["command"] == ["sparsecore", "server"]
    pod_spec = STATEFULSET["spec"]["template"]["spec"]
    index_source = env_of(SERVER)["SERVER_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index_source == "metadata.labels['apps.kubernetes.io/pod-index']"  # the pod's ordinal
    sts, service = STATEFULSET["metadata"]["name"], SERVER_SERVICE["metadata"]["name"]
    for ordinal in range(replicas):
        args = parse_server_args(expand(SERVER["args"], SERVER, {"SERVER_INDEX": str(ordinal)}), monkeypatch)
        assert args.server_index == ordinal and args.num_servers == replicas
        # Registered under the pod's stable DNS name, which the coordinator hands to the workers.
        assert args.advertise_address == f"{sts}-{ordinal}.{service}"
        assert args.coordinator == coordinator_address()
    assert args.address == "0.0.0.0" and args.metrics_address == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in SERVER["ports"]}
    assert ports == {"rpc": args.port, "metrics": args.metrics_port}
    assert {p["name"]: p["port"] for p in SERVER_SERVICE["spec"]["ports"]} == ports
    assert SERVER_SERVICE["spec"]["clusterIP"] == "None"  # headless: a DNS name per pod
    labels = STATEFULSET["spec"]["template"]["metadata"]["labels"]
    assert STATEFULSET["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert SERVER_SERVICE["spec"]["selector"].items() <= labels.items()
    # Every server writes its part of each snapshot into the same directory.
    claim = mounts(pod_spec, SERVER)[args.snapshot_dir]["persistentVolumeClaim"]["claimName"]
    pvc = DOCS[("PersistentVolumeClaim", claim)]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] or replicas == 1
    assert_token_from_the_secret(args.token_file, pod_spec, SERVER)


def test_workers_parse_and_agree_with_the_servers_and_their_job():
    spec = JOB["spec"]
    pod_spec = spec["template"]["spec"]
    env = {name: e["value"] for name, e in env_of(WORKER).items()}
    world = int(env["WORLD_SIZE"])
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == world
    assert pod_spec["restartPolicy"] == "OnFailure" and spec["backoffLimit"] >= 1
    assert WORKER["command"] == ["python", "-m", "sparsecore.launch"]
    args = launch._parser().parse_args(expand(WORKER["args"], WORKER))
    assert getattr(args, "train.steps") and args.snapshot_every >= 1
    assert_token_from_the_secret(getattr(args, "train.token_file"), pod_spec, WORKER)
    # Each pod finds its rank where the code reads it.
    for index in range(world):
        assert launch.worker_env({**env, "JOB_COMPLETION_INDEX": str(index)}) == \
            launch.WorkerEnv(rank=index, world_size=world)
    # No server list and no gloo group: the coordinator names the servers; the dense model is on them.
    assert env[launch.ENV_COORDINATOR] == coordinator_address()
    assert launch.ENV_SERVERS not in env and "MASTER_ADDR" not in env
    assert getattr(args, "train.coordinator") is None and getattr(args, "train.mode") is None


def test_the_coordinator_parses_and_agrees_with_the_servers_and_workers(monkeypatch):
    assert COORDINATOR_SET["spec"]["replicas"] == 1 and COORDINATOR["command"] == ["sparsecore", "coordinator"]
    args = parse_server_args(COORDINATOR["args"], monkeypatch, coordinator.main)
    assert args.address == "0.0.0.0" and args.servers == STATEFULSET["spec"]["replicas"]
    assert args.workers == JOB["spec"]["completions"] and args.snapshot_every_steps >= 1
    assert {p["name"]: p["port"] for p in COORDINATOR_SERVICE["spec"]["ports"]} == {"rpc": args.port}
    assert COORDINATOR_SERVICE["spec"]["selector"].items() <= COORDINATOR_SET["spec"]["template"]["metadata"][
        "labels"].items()
    pod_spec = COORDINATOR_SET["spec"]["template"]["spec"]
    # Its record lies on the snapshot volume (a restarted coordinator continues from it), in a
    # folder of its own beside the servers' step-<k> snapshots.
    _, volume = next((m, v) for m, v in mounts(pod_spec, COORDINATOR).items()
                         if args.snapshot_dir.startswith(m + "/"))
    assert volume["persistentVolumeClaim"]["claimName"] == "sparsecore-snapshots"
    assert not os.path.basename(args.snapshot_dir).startswith("step-")
    assert_token_from_the_secret(args.token_file, pod_spec, COORDINATOR)


def test_the_docs_show_how_to_create_the_secret_and_apply_the_manifests():
    with open(os.path.join(ROOT, "docs", "launch.md")) as f:
        text = f.read()
    assert "kubectl create secret generic sparsecore-token --from-file=token=" in text
    assert "kubectl apply -k deploy/kubernetes" in text
