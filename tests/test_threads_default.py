"""The Trainer and the torch bridge split the cores between torch's intra-op pool and
sparsecore's pool by default, never override a choice already made, and can be told."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

import sparsecore as sc  # noqa: E402
from sparsecore.threads import default_split  # noqa: E402

PYTHON_DIR = os.path.dirname(os.path.dirname(sc.__file__))


def run_child(body: str, env: dict | None = None) -> dict:
    """Runs ``body`` in a fresh interpreter (the split is applied once per process); the
    body sets ``result``, which comes back as a dict."""
    code = "import json, os, torch, sparsecore as sc, sparsecore.torch\n" + textwrap.dedent(body) + \
        "\nprint('RESULT', json.dumps(result))\n"
    child_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SPARSECORE_THREADS")}
    child_env.update(env or {}, PYTHONPATH=PYTHON_DIR)
    done = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("cores, split", [(1, (1, 1)), (2, (1, 1)), (3, (1, 2)), (8, (4, 4)), (64, (32, 32))])
def test_default_split_never_oversubscribes(cores, split):
    assert default_split(cores) == split
    assert sum(split) <= max(cores, 2)


def test_default_split_refuses_zero_cores():
    with pytest.raises(ValueError, match="cores"):
        default_split(0)


def test_torch_bridge_applies_the_split():
    r = run_child("""
        m = sparsecore.torch.EmbeddingBagCollection({"a": sc.TableConfig(dim=4)})
        result = {"torch": torch.get_num_threads(), "sparse": sc.num_threads(),
                  "expected": list(sc.default_split()), "cores": sc.available_cores()}
    """)
    assert [r["torch"], r["sparse"]] == r["expected"]
    assert r["torch"] + r["sparse"] <= max(r["cores"], 2)


def test_trainer_applies_the_split_for_the_cores_it_may_use():
    r = run_child("""
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
        import numpy as np
        feats = {"a": np.arange(8)}
        sc.Trainer((feats, np.zeros(8, np.float32)), sparsecore.torch.mlp(4, [2]),
                   {"a": sc.TableConfig(dim=4)}, batch_size=4, progress=False)
        result = {"torch": torch.get_num_threads(), "sparse": sc.num_threads()}
    """)
    assert (r["torch"], r["sparse"]) == (1, 1)


def test_an_explicit_set_num_threads_is_kept():
    r = run_child("""
        torch.set_num_threads(1)
        sc.set_num_threads(3)
        sparsecore.torch.EmbeddingBagCollection({"a": sc.TableConfig(dim=4)})
        result = {"torch": torch.get_num_threads(), "sparse": sc.num_threads()}
    """)
    assert (r["torch"], r["sparse"]) == (1, 3)


def test_environment_keep_turns_the_split_off():
    r = run_child("""
        torch.set_num_threads(3)
        sparsecore.torch.EmbeddingBagCollection({"a": sc.TableConfig(dim=4)})
        result = {"torch": torch.get_num_threads(), "sparse": sc.num_threads(), "hw": os.cpu_count()}
    """, env={"SPARSECORE_THREADS": "keep"})
    assert r["torch"] == 3


def test_omp_num_threads_is_torchs_and_sparsecore_takes_the_rest():
    r = run_child("""
        sparsecore.torch.EmbeddingBagCollection({"a": sc.TableConfig(dim=4)})
        result = {"torch": torch.get_num_threads(), "sparse": sc.num_threads(), "cores": sc.available_cores()}
    """, env={"OMP_NUM_THREADS": "1"})
    assert r["torch"] == 1
    assert r["sparse"] == max(1, r["cores"] - 1)


def test_threads_argument_sets_both_pools():
    r = run_child("""
        sparsecore.torch.EmbeddingBagCollection({"a": sc.TableConfig(dim=4)}, threads=(2, 3))
        result = {"torch": torch.get_num_threads(), "sparse": sc.num_threads()}
    """)
    assert (r["torch"], r["sparse"]) == (2, 3)


def test_threads_none_changes_nothing():
    r = run_child("""
        torch.set_num_threads(3)
        sparsecore.torch.EmbeddingBagCollection({"a": sc.TableConfig(dim=4)}, threads=None)
        result = {"torch": torch.get_num_threads()}
    """)
    assert r["torch"] == 3


@pytest.mark.parametrize("bad", ["half", (1,), (0, 1), (1, 2.5)])
def test_bad_threads_argument_is_a_value_error(bad):
    torch = pytest.importorskip("torch")
    before = (torch.get_num_threads(), sc.num_threads())
    with pytest.raises(ValueError, match="threads"):
        sc.threads.apply_default_split(bad)
    assert (torch.get_num_threads(), sc.num_threads()) == before
