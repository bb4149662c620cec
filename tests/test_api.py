"""The public API's spelling: __all__ is exactly what the package exports, exception classes end
in Error, and every renamed spelling still works for one release with a DeprecationWarning."""

import ast
import os
import types
import warnings

import numpy as np
import pytest

import sparsecore as sc
from sparsecore import cuda, rpc, server


def public_names(module):
    return {n for n in dir(module) if not n.startswith("_")}


def test_all_lists_exactly_the_public_names():
    submodules_imported_as_a_side_effect = {
        n for n in public_names(sc)
        if isinstance(getattr(sc, n), types.ModuleType) and n not in ("cluster", "data", "quant", "rpc")
    }
    exported = public_names(sc) - submodules_imported_as_a_side_effect - {"annotations"}
    assert sorted(exported | {"Trainer"}) == sorted(sc.__all__)
    for name in sc.__all__:
        assert getattr(sc, name) is not None
    for module in (rpc, server, sc.quant, cuda):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name}"


def test_every_exported_exception_class_ends_in_error():
    for module in (sc, rpc):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                assert name.endswith("Error"), f"{module.__name__}.{name}"


@pytest.mark.parametrize("module", [sc, rpc])
@pytest.mark.parametrize("old,new", [("RpcTimeout", "RpcTimeoutError"),
                                     ("RpcUnknownMethod", "RpcUnknownMethodError")])
def test_renamed_exceptions_warn_and_are_the_same_class(module, old, new):
    with pytest.warns(DeprecationWarning, match=new):
        alias = getattr(module, old)
    assert alias is getattr(module, new)
    assert issubclass(alias, sc.RpcError)


def test_unknown_attributes_are_still_attribute_errors():
    with pytest.raises(AttributeError, match="no_such_name"):
        sc.no_such_name  # noqa: B018
    with pytest.raises(AttributeError):
        rpc.no_such_name  # noqa: B018


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert issubclass(sc.RpcTimeoutError, TimeoutError)
        assert sc.rpc.RpcUnknownMethodError is sc.RpcUnknownMethodError


def test_cluster_lookup_uses_the_collection_spelling_and_pull_is_deprecated():
    ps = sc.Server().client()
    ps.create_table("t", sc.TableConfig(dim=3), seed=5)
    ids = np.array([4, 9, 4], np.int64)
    assert not ps.lookup("t", ids).any()  # insert=False by default: unknown ids read as zeros
    rows = ps.lookup("t", ids, insert=True)
    reference = sc.EmbeddingCollection({"t": sc.TableConfig(dim=3)}, 5)
    np.testing.assert_array_equal(rows, reference.lookup("t", ids, insert=True))
    with pytest.warns(DeprecationWarning, match=r"Cluster\.lookup"):
        np.testing.assert_array_equal(ps.pull("t", ids, train=False), rows)
    with pytest.warns(DeprecationWarning):
        np.testing.assert_array_equal(ps.pull("t", np.array([11], np.int64)),  # train=True was the default
                                      reference.lookup("t", np.array([11], np.int64), insert=True))


def test_quantized_table_takes_the_same_switch_and_refuses_inserts():
    table = sc.QuantizedEmbeddingTable(np.array([1, 2], np.int64), np.ones((2, 4), np.float32))
    offsets = np.array([0, 2], np.int64)
    ids = np.array([1, 3], np.int64)
    np.testing.assert_array_equal(table.lookup(ids, offsets, insert=False), table.lookup(ids, offsets))
    with pytest.raises(ValueError, match="read-only"):
        table.lookup(ids, offsets, insert=True)
    with pytest.raises(ValueError, match="read-only"):
        table.indices(ids, insert=True)


def test_sync_dense_lives_in_the_torch_bridge():
    sc_torch = pytest.importorskip("sparsecore.torch")
    with pytest.warns(DeprecationWarning, match=r"sparsecore\.torch\.sync_dense"):
        old = server.sync_dense
    assert old is sc_torch.sync_dense
    assert "sync_dense" in sc_torch.__all__ and "sync_dense" not in server.__all__


def test_device_keyword_is_deprecated_for_the_cuda_class():
    tables = {"t": sc.TableConfig(dim=2)}
    with pytest.warns(DeprecationWarning, match="DeviceEmbeddingCollection"):
        emb = sc.EmbeddingCollection(tables, 1, device="cuda", emulate=True)
    assert isinstance(emb, cuda.DeviceEmbeddingCollection) and emb.emulated
    if cuda.is_available():
        with pytest.warns(DeprecationWarning, match="DeviceEmbeddingCollection"):
            emb = sc.EmbeddingCollection(tables, 1, device="cuda")
        assert isinstance(emb, cuda.DeviceEmbeddingCollection) and not emb.emulated
    else:
        with pytest.raises(RuntimeError, match="no CUDA device"), pytest.warns(DeprecationWarning):
            sc.EmbeddingCollection(tables, 1, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert type(sc.EmbeddingCollection(tables, 1, device="cpu")) is sc.EmbeddingCollection
        assert cuda.DeviceEmbeddingCollection(tables, 1, emulate=True).emulated


def test_trainer_save_refuses_to_overwrite_by_default_and_load_is_restore(tmp_path):
    pytest.importorskip("torch")
    from sparsecore.data import SyntheticConfig, SyntheticData
    from sparsecore.torch import mlp

    config = SyntheticConfig(num_groups=2, vocab_size=50, batch_size=8, seed=3)
    tables = {g: sc.TableConfig(dim=2) for g in config.names()}

    def trainer():
        return sc.Trainer(SyntheticData(config, num_samples=64), mlp(4, [3]), tables, progress=False)

    a = trainer()
    a.fit(2)
    a.save(tmp_path / "ck")
    with pytest.raises(ValueError, match="already exists"):
        a.save(tmp_path / "ck")
    a.save(tmp_path / "ck", overwrite=True)
    b = trainer()
    b.restore(tmp_path / "ck")
    assert b.step == 2
    c = trainer()
    with pytest.warns(DeprecationWarning, match=r"Trainer\.restore"):
        c.load(tmp_path / "ck")
    assert c.step == 2


def test_the_stub_of_the_compiled_module_declares_every_public_name():
    stub = os.path.join(os.path.dirname(sc.__file__), "_core.pyi")
    with open(stub) as f:
        tree = ast.parse(f.read())
    declared = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)
    missing = {n for n in dir(sc._core) if not n.startswith("_")} - declared
    assert not missing, f"python/sparsecore/_core.pyi is stale (run scripts/gen-stubs): {sorted(missing)}"
