"""``cxr-tui cam``: why did the model flag this image — a finding's Grad-CAM over the film, as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from cxr_core.atomic import check_writable
from cxr_core.errors import CxrError
from cxr_core.images import read_xray
from cxr_core.outputs import check_cam_out
from cxr_core.text import filename_part
from cxr_tui.cli.options import DeviceOpt, JsonOpt
from cxr_tui.cli.output import print_json, stdout
from cxr_tui.cli.predict import make_predictor


def cam_cmd(
    image: Annotated[Path, typer.Argument(help="An image file (PNG, JPEG, DICOM).", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Checkpoint file, run directory or run id.", show_default=False)],
    finding: Annotated[str | None, typer.Option("--finding", help="Finding to explain (default: the most probable).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Overlay PNG to write (default: IMAGE-cam-FINDING.png here). "
                                             "An existing file is replaced only when cam wrote it; never IMAGE.")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the colour map over the image.")] = 0.4,
    colormap: Annotated[str, typer.Option("--colormap", help="matplotlib colour map (jet, turbo, inferno, ...).")] = "jet",
    device: DeviceOpt = "auto",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace the overlay file even when cam did not write it (never the input image).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Grad-CAM of one finding over one image, written as a PNG overlay."""
    check_writable(out if out is not None else Path("cam.png"), "overlay")  # before the model is even loaded
    if out is not None:
        check_cam_out(out, image, force=force)
    from cxr_core.infer import cam_for_image, cam_is_empty, class_index, save_overlay

    predictor = make_predictor(model, device, 1, 0, None, False, True)
    pixels = read_xray(image).as_uint8()
    probs = predictor.predict([str(image)], use_cache=False)
    if probs.errors:
        raise CxrError(f"{image}: {next(iter(probs.errors.values()))}")
    row = probs.probs[0]
    label = predictor.labels[int(np.argmax(row))] if finding is None else predictor.labels[class_index(predictor.config, finding)]
    heat = cam_for_image(predictor.model, predictor.config, pixels, label)
    target = out or check_cam_out(Path(f"{filename_part(image.stem)}-cam-{filename_part(label)}.png"), image,
                                  force=force, named=False)  # the default name is known only now
    save_overlay(target, pixels, heat, alpha=alpha, colormap=colormap)  # marked as cam's own
    empty = cam_is_empty(heat)
    peak = None if empty else np.unravel_index(int(np.argmax(heat)), heat.shape)
    summary = {"image": str(image), "finding": label, "probability": float(row[predictor.labels.index(label)]),
               "out": str(target), "empty": empty, "peak": None if peak is None else {"x": int(peak[1]), "y": int(peak[0])},
               "size": list(heat.shape[::-1])}
    if json_out:
        print_json(summary)
        return
    where = ("the Grad-CAM map is empty (nothing in the CAM layer raises this score here; the film is written "
             "without an overlay)" if peak is None else f"Grad-CAM peak at x={peak[1]}, y={peak[0]}")
    stdout.print(f"{label}: p = {summary['probability']:.3f}; {where}; wrote {target}")
