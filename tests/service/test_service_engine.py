"""Engine: contract checks at load, provider selection, precision variants, the shared sync path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from service.core import engine as engine_module
from service.core.contract import ContractError
from service.core.engine import (
    CPU,
    CUDA,
    EngineError,
    load_engine,
    resolve_model_path,
    resolve_providers,
)
from service.core.letterbox import letterbox, unletterbox
from service.core.options import EngineOptions, available_cpus
from service.core.pipeline import Pipeline
from service.settings import Settings
from service.startup import open_engine
from tests.service.svc_helpers import RULE_CLASSES, make_rule_model, scene


def settings_for(model: Path, **kw) -> Settings:
    return Settings(model_path=model, **kw)


def test_loads_tiny_deeplab_and_reads_metadata(tiny_onnx_model: Path) -> None:
    engine = open_engine(settings_for(tiny_onnx_model, intra_op_threads=1))
    assert engine.metadata.classes == ["background", "red", "green", "blue", "stripes"]
    assert engine.input_size == 64
    assert engine.provider == CPU == engine.session.get_providers()[0]
    assert engine.session.get_session_options().intra_op_num_threads == 1
    assert engine.name == "tiny"
    assert not engine.has_confidence


def test_a_silent_fallback_from_cuda_sizes_the_cpu_threads_for_the_cpu(tiny_onnx_model: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA requested gets one intra-op thread (the model runs on the device). Where onnxruntime falls back to
    the CPU instead (this host's build has no CUDA provider, so asking for it is that fallback), the session is
    remade with the CPU's share of threads, not left running a model on one thread."""
    monkeypatch.setattr(engine_module.ort, "get_available_providers", lambda: [CUDA, CPU])
    engine = load_engine(EngineOptions(model_path=tiny_onnx_model, providers="cuda,cpu"))
    assert engine.requested_providers == [CUDA, CPU] and engine.provider == CPU
    assert engine.intra_op_threads == available_cpus()
    assert engine.session.get_session_options().intra_op_num_threads == available_cpus()


def test_a_silent_fallback_from_cuda_loads_fp32_where_precision_is_auto(tiny_onnx_model: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """'auto' picks the fp16 sibling for CUDA; when onnxruntime falls back to the CPU, fp16 there is far slower
    than fp32, so the fp32 file is loaded instead, in the same one remake that re-sizes the threads. An explicit
    fp16 is honoured on the CPU all the same."""
    from model_export.quantize import make_variant

    base = shutil.copyfile(tiny_onnx_model, tmp_path / "tiny.onnx")
    fp16 = make_variant(base, tmp_path / "tiny.fp16.onnx", "fp16")
    monkeypatch.setattr(engine_module.ort, "get_available_providers", lambda: [CUDA, CPU])
    opened: list[Path] = []
    create = engine_module.create_session

    def recording_create(path: Path, *args, **kwargs) -> ort.InferenceSession:
        opened.append(path)
        return create(path, *args, **kwargs)

    monkeypatch.setattr(engine_module, "create_session", recording_create)

    engine = load_engine(EngineOptions(model_path=base, providers="cuda,cpu"))
    assert engine.provider == CPU
    assert opened == [fp16, base]  # picked for CUDA, then one remake on the fp32 file
    assert engine.model_path == base and engine.name == "tiny"
    assert engine.precision == "fp32" == engine.session.get_modelmeta().custom_metadata_map["precision"]
    assert engine.intra_op_threads == available_cpus()

    opened.clear()
    explicit = load_engine(EngineOptions(model_path=base, providers="cuda,cpu", precision="fp16"))
    assert explicit.provider == CPU and explicit.model_path == fp16 and explicit.name == "tiny.fp16"
    assert explicit.precision == "fp16" == explicit.session.get_modelmeta().custom_metadata_map["precision"]
    assert set(opened) == {fp16}

    opened.clear()  # CUDA listed after the CPU: the CPU runs the model, so 'auto' means fp32 from the start
    cpu_first = load_engine(EngineOptions(model_path=base, providers="cpu,cuda"))
    assert cpu_first.provider == CPU and cpu_first.model_path == base and opened == [base]


def test_confidence_output_is_detected(tiny_onnx_model_with_confidence: Path) -> None:
    assert open_engine(settings_for(tiny_onnx_model_with_confidence)).has_confidence


def test_model_without_metadata_is_refused(tmp_path: Path) -> None:
    model = make_rule_model(tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(ContractError, match="metadata"):
        open_engine(settings_for(model))


def test_wrong_input_dtype_is_refused(tmp_path: Path) -> None:
    model = make_rule_model(tmp_path / "float_in.onnx", input_dtype=TensorProto.FLOAT)
    with pytest.raises(ContractError, match=r"input 'image' must be uint8.*tensor\(float\)"):
        open_engine(settings_for(model))


def test_wrong_labels_dtype_is_refused(tmp_path: Path) -> None:
    model = make_rule_model(tmp_path / "int64_out.onnx", labels_dtype=TensorProto.INT64)
    with pytest.raises(ContractError, match=r"output 'labels' must be uint8.*tensor\(int64\)"):
        open_engine(settings_for(model))


def test_missing_and_garbage_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"SEGMENT_MODEL_PATH: model file .*nope.onnx not found"):
        open_engine(settings_for(tmp_path / "nope.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(ContractError, match="cannot load"):
        open_engine(settings_for(junk))


def test_provider_resolution() -> None:
    assert resolve_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert resolve_providers("auto", [CPU]) == [CPU]
    assert resolve_providers("cuda, cpu", [CUDA, CPU]) == [CUDA, CPU]
    assert resolve_providers("CPUExecutionProvider", [CPU]) == [CPU]
    with pytest.raises(EngineError, match="not available"):
        resolve_providers("cuda", [CPU])
    # TensorRT is refused by name even where the build has it: nothing about it is built or measured.
    for spec in ("tensorrt,cuda,cpu", "trt", "TensorrtExecutionProvider"):
        with pytest.raises(EngineError, match="TensorRT execution provider is not supported"):
            resolve_providers(spec, ["TensorrtExecutionProvider", CUDA, CPU])


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this host has CUDA")
def test_require_gpu_fails_on_a_cpu_only_host(rule_model: Path) -> None:
    with pytest.raises(EngineError, match=r"SEGMENT_REQUIRE_GPU: .*CPUExecutionProvider"):
        open_engine(settings_for(rule_model, require_gpu=True))


def test_precision_variants(tmp_path: Path, rule_model: Path) -> None:
    base = shutil.copyfile(rule_model, tmp_path / "m.onnx")
    assert resolve_model_path(base, "auto", cuda_active=True) == base  # no sibling: stay
    assert resolve_model_path(base, "fp32", cuda_active=True) == base
    fp16 = shutil.copyfile(rule_model, tmp_path / "m.fp16.onnx")
    assert resolve_model_path(base, "auto", cuda_active=True) == fp16
    assert resolve_model_path(base, "auto", cuda_active=False) == base
    assert resolve_model_path(base, "fp16", cuda_active=False) == fp16
    with pytest.raises(EngineError, match=r"m\.int8\.onnx does not exist"):
        resolve_model_path(base, "int8", cuda_active=False)


def test_segment_images_matches_direct_ort(rule_model: Path) -> None:
    """The sync path: letterbox → one batched run → unletterbox, per image at its own size."""
    engine = open_engine(settings_for(rule_model))
    session = ort.InferenceSession(str(rule_model), providers=[CPU])
    images = [scene(150, 100), scene(96, 96), scene(40, 130)]
    got = Pipeline(engine, batch_size=2).segment_images(images)
    for image, labels in zip(images, got, strict=True):
        assert labels.shape == image.shape[:2] and labels.dtype == np.uint8
        tensor, info = letterbox(image, 96, engine.metadata.pad_rgb)
        expected = unletterbox(session.run(None, {"image": tensor[None]})[0][0], info)
        np.testing.assert_array_equal(labels, expected)
    # The 96x96 scene needs no letterbox: the answer is the raw session output.
    np.testing.assert_array_equal(got[1], session.run(None, {"image": images[1][None]})[0][0])
    assert set(np.unique(got[0]).tolist()) == {0, 1, 2, 3}  # background, red, green bar, blue hole
    assert len(RULE_CLASSES) == engine.metadata.num_classes


# The CUDA provider's option names (onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc): its option
# parser throws on any other name ("Unknown provider option"), as a plain RuntimeError in Python.
CUDA_OPTION_NAMES = {
    "device_id", "has_user_compute_stream", "user_compute_stream", "gpu_mem_limit", "arena_extend_strategy",
    "cudnn_conv_algo_search", "do_copy_in_default_stream", "gpu_external_alloc", "gpu_external_free",
    "gpu_external_empty_cache", "cudnn_conv_use_max_workspace", "enable_cuda_graph", "cudnn_conv1d_pad_to_nc1d",
    "tunable_op_enable", "tunable_op_tuning_enable", "tunable_op_max_tuning_duration_ms",
    "enable_skip_layer_norm_strict_mode", "prefer_nhwc", "use_ep_level_unified_stream", "use_tf32",
}


class CudaOptionChecking(ort.InferenceSession):
    """A session of this CPU build that refuses unknown CUDA option names as onnxruntime-gpu's CUDA provider does,
    when the session is created; onnxruntime's own Python code (its fallback included) does the rest."""

    def _create_inference_session(self, providers: list, provider_options: list | None,
                                  disabled_optimizers: object = None) -> None:
        for provider in providers or []:
            if isinstance(provider, tuple) and provider[0] == CUDA:
                unknown = sorted(set(provider[1]) - CUDA_OPTION_NAMES)
                if unknown:
                    self._fallback_providers = [CPU]  # as onnxruntime's own method sets it before the provider
                    raise RuntimeError(f'Unknown provider option: "{unknown[0]}".')
        return super()._create_inference_session(providers, provider_options, disabled_optimizers)


def test_a_cuda_option_the_provider_rejects_stops_the_engine(rule_model: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's Python fallback would make the session again on the CPU alone when the CUDA provider throws
    (a mistyped option, a device_id out of range), leaving a line on stdout and an engine on the CPU; the engine
    asks for no fallback, so the mistake stops it, naming the setting."""
    monkeypatch.setattr(engine_module.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", CudaOptionChecking)
    spelled_right = load_engine(EngineOptions(model_path=rule_model, providers="cuda,cpu",
                                              cuda_options={"prefer_nhwc": "0"}))
    assert spelled_right.provider == CPU  # this build has no CUDA provider: the known quiet fallback, no error
    with pytest.raises(EngineError, match=r'SEGMENT_CUDA_OPTIONS: .*Unknown provider option: "prefer_nhcw"') as err:
        open_engine(settings_for(rule_model, providers="cuda,cpu", cuda_options={"prefer_nhcw": "0"}))
    assert err.value.setting == "cuda_options"


def test_no_engine_session_falls_back_on_its_own(rule_model: Path) -> None:
    """Every session the engine makes (the contract's, each bucket's, each bound instance's) has onnxruntime's
    run-time fallback off too: a run failing in the CUDA provider must fail, not move that session to the CPU."""
    engine = load_engine(EngineOptions(model_path=rule_model, providers="cpu", intra_op_threads=1, fixed_shapes="on",
                                       io_binding="on", concurrent_batches=2, max_batch_size=2))
    engine.warm_up()
    sessions = [engine.session, *(s for bucket in engine.runner.buckets for s in bucket.sessions)]
    assert len(sessions) == 5
    assert not any(session._enable_fallback for session in sessions)
