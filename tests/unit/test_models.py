"""Model registry, configs, builders and weight loading, on tiny CPU models; nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import pickle
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cxr_core.assets import asset_path
from cxr_core.errors import CxrError
from cxr_core.labels import get_space
from cxr_core.models import (
    ModelConfig,
    UnknownModel,
    WeightsUnavailable,
    build_model,
    create_model,
    get_spec,
    list_models,
    model_config,
    read_state_dict,
)

NIH = get_space("nih").labels
TINY = ["tiny_efficientnet", "tiny_resnet", "tiny_convnext", "tiny_vit", "tiny_biomedclip"]
FULL_TIMM = ["efficientnet_b0", "efficientnet_b3", "densenet121", "resnet18", "resnet50", "mobilenetv3_large_100",
             "convnext_tiny", "vit_base_patch16_224"]


needs_xrv = pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None,
                               reason="torchxrayvision is not installed (pip install 'cxr[xrv]')")


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any attempt to fetch from the hub fails the test; the HF cache is an empty temp dir."""
    import huggingface_hub

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("a test tried to download from the Hugging Face hub")  # BaseException: never caught as a failure

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # torchxrayvision's cache is under ~


def _hook_output(model: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _sizes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- registry ---------------------------------------------------------------------------------------------


def test_registry_lists_the_promised_models():
    full = list_models(include_tiny=False)
    assert set(FULL_TIMM + ["biomedclip", "xrv_densenet121_all", "xrv_resnet50_all"]) <= set(full)
    assert not any(name.startswith("tiny_") for name in full)
    assert set(TINY) <= set(list_models()) and list_models()[: len(full)] == full


def test_unknown_model_is_one_line_with_close_matches():
    with pytest.raises(UnknownModel) as err:
        create_model("efficientnet-b9", 2)
    message = str(err.value)
    assert isinstance(err.value, CxrError) and "\n" not in message
    assert "did you mean efficientnet_b3" in message and "available: efficientnet_b0" in message
    assert get_spec("EfficientNet-B0").name == "efficientnet_b0"


@pytest.mark.parametrize("name", FULL_TIMM + ["biomedclip"])
def test_full_size_configs_match_their_networks(name: str):
    """Config without weights for every full-size model; CAM layer and ViT geometry checked on a meta build."""
    import open_clip.model  # noqa: F401  (imported outside the meta-device context)

    config = model_config(name, NIH)
    assert config.labels == NIH and config.in_chans == 3 and len(config.mean) == len(config.std) == 3
    assert config.input_size >= 224
    with torch.device("meta"):
        model = build_model(config)
    model.get_submodule(config.cam_layer)
    spec = get_spec(name)
    if spec.is_vit:
        trunk = model.visual.trunk if config.family == "biomedclip" else model
        assert trunk.patch_embed.patch_size == (spec.patch_size, spec.patch_size)
        assert trunk.num_prefix_tokens == config.prefix_tokens == 1 and len(trunk.blocks) == spec.depth
        assert config.vit_tokens == (14, 14)


@needs_xrv
@pytest.mark.parametrize("name, size", [("xrv_densenet121_all", 224), ("xrv_resnet50_all", 512)])
def test_xrv_configs_keep_its_scaling(name: str, size: int):
    config = model_config(name, ["Effusion", "Cardiomegaly"])
    assert (config.in_chans, config.input_size, config.mean) == (1, size, (0.5,))
    assert config.std[0] == pytest.approx(1 / 2048)
    pixel = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose((pixel - config.mean[0]) / config.std[0], torch.tensor([-1024.0, 0.0, 1024.0]))
    with torch.device("meta"):
        model = build_model(config)
    model.get_submodule(config.cam_layer)


# --- building and forward -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_forward_and_expose_their_cam_layer(name: str):
    size = None if name == "tiny_biomedclip" else 64
    model = create_model(name, labels=["Effusion", "Mass", "Nodule"], image_size=size).eval()
    config = model.cxr_config
    assert config.input_size == (size or 160)
    x = torch.rand(2, config.in_chans, config.input_size, config.input_size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    activation = _hook_output(model, config.cam_layer, x)
    if config.vit_tokens is None:
        assert activation.ndim == 4 and activation.shape[0] == 2
    else:
        rows, cols = config.vit_tokens
        assert (rows, cols) == (config.input_size // 16,) * 2
        assert activation.shape[:2] == (2, config.prefix_tokens + rows * cols)


def test_num_classes_gives_placeholder_labels_and_both_is_an_error():
    config = model_config("tiny_resnet", ["a"])
    assert config.labels == ("a",)
    assert create_model("tiny_resnet", 3, image_size=32).cxr_config.labels == ("class_0", "class_1", "class_2")
    with pytest.raises(CxrError, match="not both"):
        create_model("tiny_resnet", 3, labels=["a", "b", "c"])
    with pytest.raises(CxrError, match="give labels"):
        create_model("tiny_resnet")


def test_resnet18_builds_at_64px_with_nih_labels():
    model = create_model("resnet18", labels=NIH, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, len(NIH))
    assert model.cxr_config.mean == (0.485, 0.456, 0.406) and model.cxr_config.extra["pretrained_size"] == 224


def test_vit_size_must_be_a_multiple_of_its_patch_and_biomedclip_is_fixed():
    with pytest.raises(CxrError, match="multiple of its 16-pixel patches"):
        model_config("tiny_vit", ["a"], image_size=70)
    with pytest.raises(CxrError, match="224x224 input only"):
        model_config("biomedclip", ["a"], image_size=256)
    with pytest.raises(CxrError, match="ViT models only"):
        model_config("resnet18", ["a"], unfreeze_layers=2)


# --- config round trip -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, size, unfreeze", [("tiny_vit", 64, 1), ("tiny_biomedclip", None, None)])
def test_config_round_trips_through_json_and_rebuilds_the_same_architecture(name, size, unfreeze):
    model = create_model(name, labels=["Effusion", "Mass"], image_size=size, unfreeze_layers=unfreeze)
    config = model.cxr_config
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and hash(again) == hash(config)
    assert isinstance(again.labels, tuple) and isinstance(again.vit_tokens, tuple)
    rebuilt = build_model(again)
    assert _sizes(rebuilt) == _sizes(model)
    assert [p.requires_grad for p in rebuilt.parameters()] == [p.requires_grad for p in model.parameters()]


def test_timm_vit_runs_at_a_non_native_size_with_its_last_blocks_trainable():
    model = create_model("tiny_vit", labels=["a", "b"], image_size=64, unfreeze_layers=1)
    assert model.cxr_config.vit_tokens == (4, 4) and model.pos_embed.shape[1] == 1 + 10 * 10  # native grid kept
    assert _trainable(model) == sum(_count(m) for m in (model.blocks[-1], model.norm, model.head))


def test_config_from_dict_rejects_unknown_or_missing_fields():
    data = model_config("tiny_resnet", ["a"]).to_dict()
    with pytest.raises(CxrError, match="unknown fields future"):
        ModelConfig.from_dict({**data, "future": 1})
    with pytest.raises(CxrError, match="lacks labels"):
        ModelConfig.from_dict({k: v for k, v in data.items() if k != "labels"})
    with pytest.raises(CxrError, match="mean/std"):
        ModelConfig.from_dict({**data, "in_chans": 1})


# --- pretrained weights without a network ------------------------------------------------------------------


def test_pretrained_offline_names_the_hub_file_quickly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        create_model("tiny_resnet", 2, pretrained=True)
    assert time.perf_counter() - started < 5
    message = str(err.value)
    assert "timm/test_resnet.r160_in1k" in message and "--weights PATH" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message
    with pytest.raises(WeightsUnavailable, match="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"):
        create_model("biomedclip", 2, pretrained=True)


def test_pretrained_weights_in_the_hf_cache_load_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The path `hf download` leaves behind: found in the cache, loaded safely, ImageNet head replaced."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    imagenet = create_model("tiny_resnet", 1000, image_size=32)
    repo = tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file(imagenet.state_dict(), str(repo / "snapshots" / "abc123" / "model.safetensors"))
    model = create_model("tiny_resnet", labels=["Effusion", "Mass"], image_size=32, pretrained=True)
    assert model.cxr_load_report.source.endswith("model.safetensors")
    assert set(model.cxr_load_report.head_dropped) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)


def _offline_flag_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_unreachable_hub_fails_in_seconds_without_retrying(monkeypatch: pytest.MonkeyPatch):
    _offline_flag_cleared(monkeypatch)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match=f"cannot reach http://127.0.0.1:{port}"):
        create_model("tiny_efficientnet", 2, pretrained=True)
    assert time.perf_counter() - started < 5


def test_hub_that_accepts_but_never_answers_times_out(monkeypatch: pytest.MonkeyPatch):
    """A proxy or sandbox that accepts connections and stays silent must not pass for a reachable hub."""
    from cxr_core.models import hub

    _offline_flag_cleared(monkeypatch)
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.perf_counter()
        with pytest.raises(WeightsUnavailable, match="timed out|no answer"):
            create_model("tiny_efficientnet", 2, pretrained=True)
    assert time.perf_counter() - started < 5


# --- local weight files ------------------------------------------------------------------------------------


def test_safetensors_round_trip_gives_identical_outputs(tmp_path: Path):
    source = create_model("tiny_convnext", labels=["a", "b"], image_size=64).eval()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_model("tiny_convnext", labels=["a", "b"], image_size=64, weights=path).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))
    report = loaded.cxr_load_report
    assert report.loaded == len(source.state_dict()) and not report.head_dropped and not report.ignored


def test_nested_and_prefixed_torch_checkpoint_loads(tmp_path: Path):
    source = create_model("tiny_resnet", 2, image_size=32)
    path = tmp_path / "run.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = create_model("tiny_resnet", 2, image_size=32, weights=path)
    assert loaded.cxr_load_report.strip_prefix == "module."
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())


def test_imagenet_head_is_dropped_and_reported(tmp_path: Path):
    imagenet = create_model("tiny_resnet", 1000, image_size=32)
    path = tmp_path / "imagenet.safetensors"
    save_file(imagenet.state_dict(), str(path))
    model = create_model("tiny_resnet", 3, image_size=32, weights=path)
    report = model.cxr_load_report
    assert set(report.head_dropped) == set(report.head_initialised) == {"fc.weight", "fc.bias"}
    assert report.loaded == len(imagenet.state_dict()) - 2
    assert torch.equal(model.conv1[0].weight, imagenet.conv1[0].weight)
    assert "dropped 2 head tensors" in report.summary() and "\n" not in report.summary()


def test_backbone_that_does_not_fit_is_an_error(tmp_path: Path):
    state = create_model("tiny_resnet", 2, image_size=32).state_dict()
    missing = tmp_path / "missing.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("layer4.0.conv1")}, str(missing))
    with pytest.raises(CxrError, match=r"missing \(layer4\.0\.conv1"):
        create_model("tiny_resnet", 2, image_size=32, weights=missing)
    other = tmp_path / "effnet.safetensors"
    save_file(create_model("tiny_efficientnet", 2).state_dict(), str(other))
    with pytest.raises(CxrError, match="do not fit|no tensor matches"):
        create_model("tiny_resnet", 2, weights=other)
    with pytest.raises(CxrError, match="weights file not found"):
        create_model("tiny_resnet", 2, weights=tmp_path / "nope.pt")


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("wrap", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, wrap: str):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if wrap == "torch_zip":
        torch.save({"fc.weight": torch.zeros(2, 2), "x": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=2))
    for trusted in ((), ("torch.nn", "torchvision.models", "torchxrayvision")):
        with pytest.raises(CxrError, match=r"refused to load: unpickling it would need \S*open,"):
            read_state_dict(path, trusted)
    with pytest.raises(CxrError, match="refused"):
        create_model("tiny_resnet", 2, weights=path)
    assert not marker.exists()


def test_whole_pickled_model_needs_trusted_module_classes(tmp_path: Path):
    source = create_model("tiny_resnet", 2, image_size=32)
    path = tmp_path / "whole.pt"
    torch.save(source, path)
    with pytest.raises(CxrError, match="refused to load"):
        read_state_dict(path)
    with pytest.raises(CxrError, match="refused to load"):  # cxr_config is not an nn.Module: still refused
        read_state_dict(path, ("torch.nn", "timm"))
    del source.cxr_config, source.cxr_load_report
    torch.save(source, path)
    state = read_state_dict(path, ("torch.nn", "timm"))
    assert state.keys() == source.state_dict().keys()


# --- BiomedCLIP ------------------------------------------------------------------------------------------


def test_tiny_biomedclip_trains_only_the_last_blocks_and_head():
    model = create_model("tiny_biomedclip", labels=["a", "b"])
    trunk = model.visual.trunk
    expected = sum(_count(m) for m in (trunk.blocks[-2], trunk.blocks[-1], trunk.norm, model.visual.head,
                                      model.classifier))
    assert model.cxr_config.extra["unfreeze_layers"] == 2
    assert _trainable(model) == expected < _count(model)
    assert not any(p.requires_grad for p in trunk.patch_embed.parameters())
    head_only = create_model("tiny_biomedclip", labels=["a"], unfreeze_layers=0)
    assert _trainable(head_only) == _count(head_only.classifier) > 0
    everything = create_model("tiny_biomedclip", labels=["a"], unfreeze_layers=6)
    assert _trainable(everything) == _count(everything)
    with pytest.raises(CxrError, match="between 0 .* and 6"):
        model_config("tiny_biomedclip", ["a"], unfreeze_layers=7)


def test_tiny_biomedclip_loads_an_open_clip_checkpoint(tmp_path: Path):
    donor = create_model("tiny_biomedclip", labels=["a", "b"])
    clip_state = {f"visual.{k}": v for k, v in donor.visual.state_dict().items()}
    clip_state.update({"text.transformer.embeddings.weight": torch.zeros(4, 4), "logit_scale": torch.tensor(4.6)})
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip_state, path)
    model = create_model("tiny_biomedclip", labels=["a", "b", "c"], weights=path)
    report = model.cxr_load_report
    assert report.strip_prefix == report.add_prefix == "visual."
    assert set(report.ignored) == {"text.transformer.embeddings.weight", "logit_scale"}
    assert report.head_initialised and all(k.startswith("classifier.") for k in report.head_initialised)
    assert all(torch.equal(v, model.visual.state_dict()[k]) for k, v in donor.visual.state_dict().items())
    assert model.visual.trunk.blocks[0].attn.qkv.weight.requires_grad is False


def test_full_biomedclip_head_is_about_400k_parameters():
    import open_clip.model  # noqa: F401  (imported outside the meta-device context)

    with torch.device("meta"):
        model = create_model("biomedclip", labels=NIH)
    assert 380_000 < _count(model.classifier) < 420_000
    assert 85e6 < _count(model.visual) < 88e6
    blocks = model.visual.trunk.blocks
    assert _trainable(model) == sum(_count(m) for m in (blocks[-2], blocks[-1], model.visual.trunk.norm,
                                                       model.visual.head, model.classifier))


def test_biomedclip_vision_config_is_shipped():
    shipped = json.loads(asset_path("models/biomedclip_vision.json").read_text())
    assert shipped["vision_cfg"] == {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                                     "timm_pool": "", "timm_proj": "linear", "image_size": 224}
    assert shipped["embed_dim"] == 512


# --- torchxrayvision ---------------------------------------------------------------------------------------


def test_xrv_without_the_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)
    with pytest.raises(CxrError, match=r"pip install 'cxr\[xrv\]'"):
        create_model("xrv_densenet121_all", labels=["Effusion"])


@needs_xrv
def test_xrv_densenet_answers_in_our_label_order(tmp_path: Path):
    labels = ["Pleural Effusion", "Cardiomegaly", "Lung Opacity", "Pleural Thickening"]
    model = create_model("xrv_densenet121_all", labels=labels, image_size=32).eval()
    outputs = model.cxr_config.extra["outputs"]
    targets = model.cxr_config.extra["targets"]
    assert [targets[i] for i in outputs] == ["Effusion", "Cardiomegaly", "Lung Opacity", "Pleural_Thickening"]
    x = torch.rand(1, 1, 32, 32) * 2048 - 1024
    full = _hook_output(model, "net", x)  # all 18 outputs, captured during the same forward
    with torch.no_grad():
        logits = model(x)
    assert full.shape == (1, 18) and logits.shape == (1, 4) and torch.equal(logits, full[:, outputs])
    with pytest.raises(CxrError, match="cannot predict No Finding, Tuberculosis"):
        model_config("xrv_densenet121_all", ["No Finding", "Cardiomegaly", "Tuberculosis"])
    with pytest.raises(WeightsUnavailable, match=r"seed0-best\.pt into .*\.torchxrayvision"):
        create_model("xrv_densenet121_all", labels=labels, pretrained=True)
    whole = tmp_path / "xrv-densenet.pt"  # xrv publishes its DenseNet weights as a whole pickled model
    torch.save(model.net, whole)
    reloaded = create_model("xrv_densenet121_all", labels=labels, image_size=32, weights=whole).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), logits)
    assert reloaded.cxr_load_report.add_prefix == "net."


def test_weights_that_are_not_a_torch_file_say_so(tmp_path):
    from cxr_core.errors import CxrError
    from cxr_core.models.weights import read_state_dict

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00GIF89a" + bytes(range(256)) * 4)  # was: "unpickling it would need objects other..."
    with pytest.raises(CxrError, match="not a PyTorch weights file"):
        read_state_dict(garbage)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)  # a pickle: still read
    assert list(read_state_dict(legacy)) == ["w"]
