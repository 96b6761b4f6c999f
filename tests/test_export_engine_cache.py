"""The TensorRT engine cache and the other TensorRT-free parts of export: keys, stale and corrupt entries, the
fp32 pinning policy, input specifications. None of this needs TensorRT or a GPU (the plan bytes are opaque)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ifseg_deploy.export.engine_cache import EngineCache
from ifseg_deploy.export.fp16 import keep_fp32
from ifseg_deploy.runtime.engine_file import (
    CorruptEngineError,
    EngineEnvironment,
    EngineKey,
    StaleEngineError,
    read_engine,
    sidecar_path,
    write_engine,
)
from ifseg_deploy.runtime.input_spec import InputSpec, SpecError, parse_size

PROFILE = ((1, 3, 256, 256), (1, 3, 512, 683), (4, 3, 1024, 1024))
BASE = dict(onnx_sha256="ab" * 32, tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
            precision="fp16", profile=PROFILE, builder={"workspace_bytes": 1 << 30, "optimization_level": None})
ENV = EngineEnvironment(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7")
PLAN = bytes(range(256)) * 40  # stands for a serialized engine: only its bytes matter to the cache


def key(**changes) -> EngineKey:
    return EngineKey.create(**{**BASE, **changes})


# -- the key ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "cd" * 32),
    ("tensorrt_version", "10.13.0.35"),
    ("gpu_name", "NVIDIA H100 80GB HBM3"),
    ("compute_capability", "9.0"),
    ("precision", "int8"),
    ("profile", ((1, 3, 256, 256), (1, 3, 512, 683), (8, 3, 1024, 1024))),
    ("profile", ((1, 3, 512, 683),) * 3),
    ("builder", {"workspace_bytes": 1 << 29, "optimization_level": None}),
    ("builder", {"workspace_bytes": 1 << 30, "optimization_level": 5}),
])
def test_key_changes_when_any_part_changes(field, value):
    a, b = key(), key(**{field: value})
    assert a != b and a.digest() != b.digest() and a.file_name() != b.file_name()
    assert any(line.startswith(field) for line in a.differences(b))


def test_key_is_stable_and_round_trips():
    assert key().digest() == key().digest()
    assert EngineKey.from_dict(json.loads(json.dumps(key().to_dict()))) == key()
    # builder options in another order are the same key
    assert key(builder={"optimization_level": None, "workspace_bytes": 1 << 30}) == key()
    assert key().file_name().startswith("fp16.256x256-1024x1024.b4.trt10.3.0.sm87.")


# -- reading and writing engines ---------------------------------------------------------------------------------
def test_written_engine_reads_back(tmp_path):
    path = write_engine(tmp_path / "model.engine", PLAN, key(), {"ifseg.precision": "fp16"})
    plan, record = read_engine(path, expected=key(), environment=ENV)
    assert plan == PLAN and record["key"] == key() and record["metadata"] == {"ifseg.precision": "fp16"}


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar-json", "sidecar-digest", "no-sidecar", "no-plan"])
def test_corrupt_entries_are_refused(tmp_path, damage):
    path = write_engine(tmp_path / "model.engine", PLAN, key())
    side = sidecar_path(path)
    if damage == "truncate":
        path.write_bytes(PLAN[:-100])
    elif damage == "flip":
        data = bytearray(PLAN)
        data[500] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "sidecar-json":
        side.write_text(side.read_text()[:-20])
    elif damage == "sidecar-digest":
        record = json.loads(side.read_text())
        record["key"]["precision"] = "fp32"  # edited by hand: the key no longer matches its digest
        side.write_text(json.dumps(record))
    elif damage == "no-sidecar":
        side.unlink()
    else:
        path.unlink()
    with pytest.raises(CorruptEngineError):
        read_engine(path, environment=ENV)


@pytest.mark.parametrize("field,value", [("tensorrt_version", "10.13.0"), ("gpu_name", "Xavier"),
                                         ("compute_capability", "7.2")])
def test_engine_from_another_machine_is_refused_with_the_reason(tmp_path, field, value):
    path = write_engine(tmp_path / "model.engine", PLAN, key())
    with pytest.raises(StaleEngineError, match=f"{field}: engine {BASE[field]} / this machine {value}"):
        read_engine(path, environment=dataclasses.replace(ENV, **{field: value}))


def test_engine_for_another_model_or_precision_is_refused(tmp_path):
    path = write_engine(tmp_path / "model.engine", PLAN, key())
    with pytest.raises(StaleEngineError, match="onnx_sha256"):
        read_engine(path, expected=key(onnx_sha256="ef" * 32))
    with pytest.raises(StaleEngineError, match="precision: fp16 -> int8"):
        read_engine(path, expected=key(precision="int8"))


def test_cache_hit_miss_and_corrupt_entry_removed(tmp_path, caplog):
    cache = EngineCache(tmp_path / "cache")
    assert cache.load(key()) is None
    stored = cache.store(key(), PLAN, {"a": "b"})
    assert stored == cache.path_for(key()) and cache.load(key())[0] == PLAN
    assert cache.load(key(precision="fp32")) is None  # another key: a miss, the entry stays
    stored.write_bytes(PLAN[:10])  # e.g. a build killed while the plan was copied by hand
    assert cache.load(key()) is None
    assert "(10 bytes) is not a complete TensorRT engine" in caplog.text
    assert not stored.exists() and not sidecar_path(stored).exists()


@pytest.mark.parametrize("crash_at", ["stage plan", "stage sidecar", "publish plan", "publish sidecar"])
def test_rewriting_an_engine_interrupted_at_any_step(tmp_path, monkeypatch, crash_at):
    """Killed at any step of a rewrite, the pair on disk is the old one, intact, or one that is refused; never
    the new plan under the old sidecar, and no temporary file visible under either name."""
    from ifseg_deploy import atomic
    from ifseg_deploy.runtime import engine_file as engine_cache

    path = write_engine(tmp_path / "model.engine", PLAN, key())
    step, calls = crash_at.split()[0], {"stage": 0, "publish": 0}
    nth = 1 if crash_at.endswith("plan") else 2

    def crashing(name, real):
        def run(*args):
            calls[name] += 1
            if name == step and calls[name] == nth:
                raise KeyboardInterrupt  # what a Ctrl-C or a kill at this point leaves behind
            return real(*args)
        return run

    monkeypatch.setattr(engine_cache, "write_staged", crashing("stage", atomic.write_staged))
    monkeypatch.setattr(engine_cache, "publish", crashing("publish", atomic.publish))
    with pytest.raises(KeyboardInterrupt):
        write_engine(path, PLAN[::-1], key(precision="int8"))
    if step == "stage":  # nothing renamed yet: the old engine still loads, temporaries are gone
        plan, record = read_engine(path, environment=ENV)
        assert plan == PLAN and record["key"] == key()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]
    else:
        with pytest.raises(CorruptEngineError, match="no .* beside it"):
            read_engine(path)
        assert path.read_bytes() == (PLAN if crash_at == "publish plan" else PLAN[::-1])


def test_timing_cache_name_depends_on_tensorrt_and_gpu(tmp_path):
    cache = EngineCache(tmp_path)
    a = cache.timing_cache_path("10.3.0", "8.7", "Orin")
    assert a != cache.timing_cache_path("10.13.0", "8.7", "Orin")
    assert a != cache.timing_cache_path("10.3.0", "8.7", "Orin Nano")
    assert a.parent == tmp_path


# -- fp32 pins of fp16 / INT8 engines ------------------------------------------------------------------------------
@pytest.mark.parametrize("layer,pinned", [
    (("NORMALIZATION", None, "node_layer_norm_3"), True),
    (("SOFTMAX", None, "node_softmax"), True),
    (("TOPK", None, "node_topk"), True),
    (("ELEMENTWISE", "POW", "/ln/Pow"), True),
    (("UNARY", "SQRT", "/ln/Sqrt"), True),
    (("REDUCE", "AVG", "/ln/ReduceMean"), True),
    (("REDUCE", "SUM", "node_linalg_vector_norm"), True),  # by name: the ONNX node is a ReduceL2
    (("REDUCE", "SUM", "node_linalg_vector_norm_1"), True),  # a second layer of the same node
    (("MATRIX_MULTIPLY", None, "node_MatMul_12"), False),
    (("CONVOLUTION", None, "node_Conv_3"), False),
    (("ELEMENTWISE", "SUM", "node_add_4"), False),
    (("REDUCE", "SUM", "node_sum_9"), False),
])
def test_fp32_pinning_policy(layer, pinned):
    assert keep_fp32(*layer, fp32_nodes={"node_linalg_vector_norm", "node_layer_norm_3"}) is pinned


def test_fp32_pins_cover_the_layernorm_of_an_exported_graph():
    onnx = pytest.importorskip("onnx")
    from ifseg_deploy.export.fp16 import fp32_node_names

    node = onnx.helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], name="ln0", axis=-1)
    mm = onnx.helper.make_node("MatMul", ["y", "w"], ["z"], name="mm0")
    graph = onnx.helper.make_graph([node, mm], "g", [], [])
    assert fp32_node_names(onnx.helper.make_model(graph)) == {"ln0"}


# -- input specifications ----------------------------------------------------------------------------------------
def test_sizes_and_specs():
    assert parse_size("512x683") == (512, 683) and parse_size("640") == (640, 640)
    with pytest.raises(SpecError):
        parse_size("512 by 683")
    fixed = InputSpec.fixed((512, 683), 2)
    assert not fixed.is_dynamic and fixed.fixed_size == (512, 683)
    assert fixed.shapes() == ((1, 3, 512, 683), (1, 3, 512, 683), (2, 3, 512, 683))
    dyn = InputSpec.dynamic((256, 256), (512, 683), (1024, 1024), 4).validate(min_cells=3)
    assert dyn.is_dynamic and dyn.fixed_size is None and dyn.accepts(600, 300) and not dyn.accepts(2048, 512)
    assert InputSpec.from_dict(dyn.to_dict()) == dyn
    with pytest.raises(SpecError, match="min <= opt <= max"):
        InputSpec.dynamic((512, 512), (256, 256), (1024, 1024)).validate()
    with pytest.raises(SpecError, match="refinement needs"):
        InputSpec.fixed((16, 32)).validate(min_cells=3)  # a 1x2 grid has no 3 neighbours
    with pytest.raises(SpecError, match="batch"):
        dataclasses.replace(fixed, max_batch=0).validate()
