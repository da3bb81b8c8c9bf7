"""Grad-CAM (cxr_core.infer.cam) and localisation metrics (cxr_core.eval.localisation), on tiny CPU models.

The reference Grad-CAM here is written by hand with a tensor hook and ``backward`` (not torchcam's
``autograd.grad`` path), and reshapes ViT tokens itself, so it is an independent check of the library's
math and of the token reshape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cxr_core.data.preprocess import letterbox
from cxr_core.errors import CxrError
from cxr_core.eval.localisation import (
    Box,
    LocalisationResult,
    box_mask,
    cam_iou,
    localisation_table,
    pointing_game,
    read_boxes,
    rescale_boxes,
    score_image,
)
from cxr_core.infer.cam import (
    CamExtractor,
    cam_for_image,
    letterbox_geometry,
    overlay,
    save_overlay,
    tokens_to_grid,
    unletterbox,
)
from cxr_core.labels import get_space
from cxr_core.models import ModelConfig, create_model

LABELS = ("a", "b", "c")


@pytest.fixture(scope="module")
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("tiny_resnet", labels=LABELS)


@pytest.fixture(scope="module")
def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return create_model("tiny_vit", labels=LABELS)


@pytest.fixture(scope="module")
def tiny_biomedclip() -> nn.Module:
    torch.manual_seed(0)
    return create_model("tiny_biomedclip", labels=LABELS, unfreeze_layers=0)  # tower frozen, head trainable


def _hook_count(model: nn.Module) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, name, {})) for m in model.modules() for name in names)


def _reference_cam(model: nn.Module, config: ModelConfig, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    """Grad-CAM by hand: activations and gradients at cam_layer, ViT tokens reshaped here, weights = mean grad."""
    store: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        store["a"] = output
        output.register_hook(lambda grad: store.__setitem__("g", grad))

    handle = model.get_submodule(config.cam_layer).register_forward_hook(keep)
    try:
        model.eval()
        logits = model(x.clone().requires_grad_(True))
        logits.gather(1, torch.tensor(classes).view(-1, 1)).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    a, g = store["a"].detach(), store["g"].detach()
    if config.vit_tokens is not None:
        rows, cols = x.shape[-2] // 16, x.shape[-1] // 16
        a = a[:, config.prefix_tokens:].reshape(len(x), rows, cols, -1).permute(0, 3, 1, 2)
        g = g[:, config.prefix_tokens:].reshape(len(x), rows, cols, -1).permute(0, 3, 1, 2)
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin(dim=(1, 2), keepdim=True)
    spread = cam.amax(dim=(1, 2), keepdim=True) - low
    return ((cam - low) / spread.clamp_min(1e-12)).numpy()


# -- the extractor on registry models ----------------------------------------------------------------------


@pytest.mark.parametrize("fixture, size", [("tiny_cnn", 96), ("tiny_vit", 160), ("tiny_vit", 96),
                                           ("tiny_biomedclip", 64)])
def test_maps_shape_range_and_match_the_hand_written_gradcam(fixture, size, request):
    model = request.getfixturevalue(fixture)
    config = model.cxr_config
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    classes = [0, 2, 1]
    with CamExtractor(model) as cams:
        maps = cams.compute(x, classes)
        assert cams.scores is not None and cams.scores.shape == (3, len(LABELS))
    assert maps.shape == (3, size, size) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    assert all(p == pytest.approx(1.0) or p == 0.0 for p in peaks)  # 0: no positive evidence at all
    assert peaks.sum() >= 2
    np.testing.assert_allclose(maps, _reference_cam(model, config, x, classes), atol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_cnn", "tiny_vit"])
def test_batched_equals_one_image_at_a_time(fixture, request):
    model = request.getfixturevalue(fixture)
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    classes = [1, 0, 2]
    with CamExtractor(model) as cams:
        batched = cams.compute(x, classes)
        single = np.stack([cams.compute(x[i:i + 1], classes[i])[0] for i in range(3)])
        many = cams.compute_many(x, [1, 0])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert many.shape == (3, 2, 96, 96)
    np.testing.assert_allclose(many[0, 0], batched[0], atol=1e-5)
    np.testing.assert_allclose(many[1, 1], batched[1], atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_cnn", "tiny_vit"])
def test_hooks_released_no_grads_left_modes_restored(fixture, request):
    model = request.getfixturevalue(fixture)
    model.train()
    before = _hook_count(model)
    x = torch.randn(2, 3, 64, 64)
    with CamExtractor(model) as cams:
        assert _hook_count(model) > before
        cams.compute(x, 0)
        assert torch.is_grad_enabled()
    assert _hook_count(model) == before == 0
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())  # CAM ran in eval mode, the caller's mode is back
    with pytest.raises(RuntimeError, match="boom"), CamExtractor(model):
        raise RuntimeError("boom")
    assert _hook_count(model) == 0
    model.eval()


def test_works_under_no_grad_inference_mode_and_with_frozen_weights():
    torch.manual_seed(0)
    model = create_model("tiny_vit", labels=LABELS).requires_grad_(False)
    x = torch.randn(1, 3, 64, 64)
    with CamExtractor(model) as cams:
        with torch.no_grad():
            a = cams.compute(x, 1)
        with torch.inference_mode():
            b = cams.compute(torch.randn(1, 3, 64, 64).copy_(x), 1)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.max() > 0


def test_vit_token_reshape_is_row_major_and_checks_counts():
    b, rows, cols, c = 2, 3, 4, 5
    grid = torch.arange(b * c * rows * cols, dtype=torch.float32).reshape(b, c, rows, cols)
    tokens = torch.cat([torch.full((b, 1, c), -1.0), grid.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + 12, C)
    assert torch.equal(tokens_to_grid(tokens, 1, (rows, cols)), grid)
    with pytest.raises(CxrError, match="13 tokens; 0 prefix tokens"):
        tokens_to_grid(tokens, 0, (rows, cols))
    with pytest.raises(CxrError, match="batch, tokens, channels"):
        tokens_to_grid(grid, 1, (rows, cols))


def test_wrong_prefix_tokens_in_a_vit_config_is_a_clear_error(tiny_vit):
    wrong = ModelConfig.from_dict({**tiny_vit.cxr_config.to_dict(), "prefix_tokens": 0})
    with CamExtractor(tiny_vit, wrong) as cams, pytest.raises(CxrError, match="prefix tokens"):
        cams.compute(torch.randn(1, 3, 64, 64), 0)
    assert _hook_count(tiny_vit) == 0


def test_bad_arguments(tiny_cnn):
    with CamExtractor(tiny_cnn) as cams:
        with pytest.raises(CxrError, match="class index 3"):
            cams.compute(torch.randn(1, 3, 32, 32), 3)
        with pytest.raises(CxrError, match="2 class indices for a batch of 1"):
            cams.compute(torch.randn(1, 3, 32, 32), [0, 1])
    with pytest.raises(RuntimeError, match="context manager"):
        CamExtractor(tiny_cnn).compute(torch.randn(1, 3, 32, 32), 0)
    bad = ModelConfig.from_dict({**tiny_cnn.cxr_config.to_dict(), "cam_layer": "layer9"})
    with pytest.raises(CxrError, match="layer9"):
        CamExtractor(tiny_cnn, bad)


# -- a model whose answer is known -------------------------------------------------------------------------


class BrightDark(nn.Module):
    """Logit 0 = mean brightness above 0.5, logit 1 = mean darkness below 0.5, from a 4x-pooled 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.AvgPool2d(4))
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.features[0].bias.copy_(torch.tensor([-0.5, 0.5]))
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


TOY = ModelConfig(name="toy", family="timm", arch="toy", labels=("Bright", "Dark"), input_size=64, in_chans=1,
                  mean=(0.0,), std=(1.0,), cam_layer="features")


def _film(height: int, width: int, square: tuple[int, int, int, int]) -> np.ndarray:
    image = np.full((height, width), 40, np.uint8)
    top, left, h, w = square
    image[top:top + h, left:left + w] = 230
    return image


def test_known_answer_points_into_the_box_per_image_class():
    model = BrightDark()
    films = [_film(64, 64, (4, 40, 16, 16)), _film(64, 64, (44, 8, 12, 12))]
    x = torch.from_numpy(np.stack(films)).float().div(255)[:, None]
    with CamExtractor(model, TOY) as cams:
        bright = cams.compute(x, 0)
        mixed = cams.compute(x, [1, 0])
    assert pointing_game(bright[0], [(40, 4, 16, 16)]) and pointing_game(bright[1], [(8, 44, 12, 12)])
    assert cam_iou(bright[0], [(40, 4, 16, 16)]) > 0.6
    assert not pointing_game(mixed[0], [(40, 4, 16, 16)])  # "Dark" points away from the bright square
    np.testing.assert_allclose(mixed[1], bright[1], atol=1e-6)


def test_cam_for_image_undoes_the_letterbox_on_a_non_square_film():
    model = BrightDark()
    image = _film(60, 100, (10, 70, 20, 20))  # wide: letterboxed with bands above and below
    box = Box("Bright", 70, 10, 20, 20)
    cam = cam_for_image(model, TOY, image, "bright")  # labels match ignoring case
    assert cam.shape == (60, 100) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert pointing_game(cam, [box])
    assert cam_iou(cam, [box]) > 0.5
    tall = cam_for_image(model, TOY, image.T.copy(), 0)
    assert tall.shape == (100, 60) and pointing_game(tall, [(10, 70, 20, 20)])
    with pytest.raises(CxrError, match="does not predict 'Nodule'"):
        cam_for_image(model, TOY, image, "Nodule")


@pytest.mark.parametrize("shape", [(60, 100), (100, 60), (37, 129), (64, 64), (10, 11), (2500, 2048)])
def test_letterbox_geometry_matches_the_training_letterbox(shape):
    boxed = letterbox(np.full(shape, 255, np.uint8), 64)
    rows, cols = np.nonzero(boxed)
    top, left, h, w = letterbox_geometry(*shape, 64)
    assert (rows.min(), cols.min(), rows.max() + 1 - rows.min(), cols.max() + 1 - cols.min()) == (top, left, h, w)


def test_unletterbox_maps_back_to_the_original_pixels():
    yy, xx = np.mgrid[0:90, 0:150]
    image = (xx * 1.5 + yy).astype(np.uint8)  # smooth, non-square
    back = unletterbox(letterbox(image, 96).astype(np.float32), 90, 150)
    assert back.shape == (90, 150)
    assert np.abs(back - image).mean() < 2.0


# -- overlays ----------------------------------------------------------------------------------------------


def test_overlay_shape_dtype_and_blend():
    gray = np.tile(np.arange(0, 200, 2, dtype=np.uint8), (50, 1))  # (50, 100)
    cam = np.zeros((25, 50), np.float32)
    cam[:5, :5] = 1.0
    rgb = overlay(gray, cam)  # the smaller map is resized to the image
    assert rgb.shape == (50, 100, 3) and rgb.dtype == np.uint8
    plain = overlay(gray, cam, alpha=0.0)
    assert np.array_equal(plain, np.repeat(gray[..., None], 3, axis=2))
    hot = overlay(gray, np.ones((50, 100)), alpha=1.0, colormap="jet")
    assert tuple(hot[0, 0]) == (128, 0, 0)  # jet's top colour: dark red
    with pytest.raises(CxrError, match="colour map"):
        overlay(gray, cam, colormap="no-such-map")


def test_save_overlay_writes_a_png_atomically(tmp_path: Path):
    gray = np.full((20, 30), 100, np.uint8)
    path = save_overlay(tmp_path / "cam.png", gray, np.random.default_rng(0).random((20, 30)))
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (30, 20) and img.mode == "RGB"
    assert [p.name for p in tmp_path.iterdir()] == ["cam.png"]  # no temporary file left behind


# -- box files ---------------------------------------------------------------------------------------------

NIH_BOXES = (
    "\ufeffImage Index,Finding Label,Bbox [x,y,w,h],,,\n"
    "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661,,,\n"
    "00014716_007.png,Infiltrate,686.0,216.0,190.0,338.0,,,\n"
    "\n"
    "00013118_008.png,Effusion,10,20,30,40\n"
)


def test_read_nih_box_file(tmp_path: Path):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(NIH_BOXES, encoding="utf-8")
    raw = read_boxes(path)
    assert list(raw) == ["00013118_008.png", "00014716_007.png"]
    assert raw["00013118_008.png"][0] == Box("Atelectasis", 225.084745762712, 547.019216763771,
                                             86.7796610169491, 79.1864406779661)
    assert raw["00013118_008.png"][1] == ("Effusion", 10.0, 20.0, 30.0, 40.0)
    assert raw["00014716_007.png"][0].label == "Infiltrate"
    assert read_boxes(path, space=get_space("nih"))["00014716_007.png"][0].label == "Infiltration"
    assert rescale_boxes(raw["00014716_007.png"], 0.25)[0] == Box("Infiltrate", 171.5, 54.0, 47.5, 84.5)


@pytest.mark.parametrize("line, reason", [
    ("a.png,Mass,1,2,3\n", "expected 6 fields"),
    ("a.png,Mass,1,2,x,4\n", "must be numbers"),
    ("a.png,Mass,1,2,0,4\n", "must be positive"),
    ("a.png,Mass,1,2,nan,4\n", "finite"),
    (",Mass,1,2,3,4\n", "must not be empty"),
    ("a.png,Mass,1,2,3,4,5\n", "extra values"),
])
def test_malformed_box_line_names_file_and_line(tmp_path: Path, line, reason):
    path = tmp_path / "boxes.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\nok.png,Mass,1,2,3,4\n" + line, encoding="utf-8")
    with pytest.raises(CxrError, match=rf"boxes\.csv: line 3: .*{reason}"):
        read_boxes(path)


def test_box_file_header_label_space_and_missing_file(tmp_path: Path):
    path = tmp_path / "boxes.csv"
    path.write_text("image,label,x,y,w,h\n", encoding="utf-8")
    with pytest.raises(CxrError, match="line 1: expected the NIH box header"):
        read_boxes(path)
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Spleen,1,2,3,4\n", encoding="utf-8")
    with pytest.raises(CxrError, match="line 2: finding 'Spleen' is not in the nih label space"):
        read_boxes(path, space=get_space("nih"))
    with pytest.raises(CxrError, match="cannot read box file"):
        read_boxes(tmp_path / "missing.csv")


def test_phantom_box_files_parse(tmp_path: Path):
    from cxr_core.phantoms import write_phantoms
    from cxr_core.phantoms.writer import BOXES

    write_phantoms(tmp_path / "set", 6, 64, 3)
    boxes = read_boxes(tmp_path / "set" / BOXES, space=get_space("phantom"))
    labels = {b.label for group in boxes.values() for b in group}
    assert labels and labels <= set(get_space("phantom").findings)
    assert all(0 <= b.x < 64 and 0 <= b.y < 64 for group in boxes.values() for b in group)


# -- metrics on hand-made maps -----------------------------------------------------------------------------


def test_pointing_game_on_hand_made_maps():
    cam = np.zeros((20, 20), np.float32)
    cam[5, 7] = 1.0  # pixel centre (7.5, 5.5)
    assert pointing_game(cam, [(6, 4, 3, 3)])  # columns 6..8, rows 4..6
    assert not pointing_game(cam, [(8, 4, 3, 3)])
    assert pointing_game(cam, [(8, 4, 3, 3), (0, 0, 2, 2)], tolerance=0.5)  # 0.5 px from the box edge
    assert pointing_game(cam, [Box("Mass", 6, 4, 3, 3)])
    assert not pointing_game(np.zeros((20, 20)), [(0, 0, 20, 20)])  # highlights nothing: a miss
    with pytest.raises(ValueError, match="no boxes"):
        pointing_game(cam, [])


def test_iou_on_hand_made_maps():
    cam = np.zeros((20, 20), np.float32)
    cam[2:6, 2:6] = 1.0
    cam[10, 10] = 0.4  # below half of the maximum: not in the predicted region
    assert cam_iou(cam, [(2, 2, 4, 4)]) == pytest.approx(1.0)
    assert cam_iou(cam, [(4, 2, 4, 4)]) == pytest.approx(8 / 24)
    assert cam_iou(cam, [(4, 2, 4, 4)], threshold=0.3) == pytest.approx(8 / 25)
    assert cam_iou(cam, [(2, 2, 2, 4), (4, 2, 2, 4)]) == pytest.approx(1.0)  # union of boxes
    assert cam_iou(np.zeros((20, 20)), [(2, 2, 4, 4)]) == 0.0
    assert box_mask((4, 4), [(-5, -5, 7, 7), (10, 10, 2, 2)]).sum() == 4  # clipped; outside ignored


def test_score_image_and_table():
    cam = np.zeros((20, 20), np.float32)
    cam[2:6, 2:6] = 1.0
    boxes = [Box("Mass", 2, 2, 4, 4), Box("Nodule", 12, 12, 4, 4), Box("Nodule", 0, 0, 1, 1), Box("Edema", 0, 0, 5, 5)]
    results = score_image({"Mass": cam, "Nodule": cam}, boxes, "x.png")
    assert results == [LocalisationResult("Mass", True, 1.0, "x.png"), LocalisationResult("Nodule", False, 0.0, "x.png")]
    table = localisation_table([*results, ("Mass", False, 0.5)])
    assert list(table) == ["Mass", "Nodule"]
    assert table["Mass"] == {"pointing_game": 0.5, "iou": 0.75, "n": 2}
    assert table["Nodule"] == {"pointing_game": 0.0, "iou": 0.0, "n": 1}


@pytest.mark.slow
def test_an_empty_map_is_said_not_drawn_as_a_flat_tint(tmp_path: Path):
    """A class whose score no activation raises (its head row is zero) has an all-zero Grad-CAM: `cam` says so,
    reports no peak, and writes the film without a colour wash."""
    from cxr_core.checkpoint import save_checkpoint
    from cxr_core.infer.cam import cam_is_empty
    from tests.cli import cxr_json

    torch.manual_seed(0)
    model = create_model("tiny_resnet", labels=["Effusion", "Nodule"], image_size=48)
    with torch.no_grad():
        model.get_classifier().weight[1].zero_()
    film = (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)
    assert cam_is_empty(cam_for_image(model, None, film, "Nodule"))
    assert not cam_is_empty(np.eye(8, dtype=np.float32))
    assert np.array_equal(overlay(film, np.zeros((8, 8))), np.repeat(film[..., None], 3, axis=2))
    checkpoint, image, out = tmp_path / "m.safetensors", tmp_path / "film.png", tmp_path / "cam.png"
    save_checkpoint(checkpoint, model.state_dict(), model.cxr_config.to_dict())
    Image.fromarray(film).save(image)
    result = cxr_json("cam", image, "--model", checkpoint, "--finding", "Nodule", "--out", out)
    assert result["empty"] is True and result["peak"] is None
    with Image.open(out) as written:
        rgb = np.asarray(written.convert("RGB"))
    assert np.array_equal(rgb, np.repeat(film[..., None], 3, axis=2))
