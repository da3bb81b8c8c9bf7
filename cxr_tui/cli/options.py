"""Options several commands share, declared once (the same flag means the same thing everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_core.data import SOURCES
from cxr_core.labels import UncertaintyPolicy

TTA_CHOICES = ("hflip", "scale")  # cxr_core.infer.engine.TTA_CHOICES (checked there)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables and text.")]
RootArg = Annotated[Path, typer.Argument(help="Data set root: a folder, or a .tgz / .npz file.", show_default=False)]
FormatOpt = Annotated[str | None, typer.Option("--format", "-f", help=f"Layout ({', '.join(SOURCES)}); detected when omitted.")]
def _labels_path(value: Path | None) -> Path | None:
    """``--labels x.csv``: the file in the current folder when it is there (as every other path option), else under
    ROOT (how it was always read)."""
    if value is not None and not value.is_absolute() and value.is_file():
        return value.absolute()
    return value


LabelsOpt = Annotated[Path | None, typer.Option("--labels", callback=_labels_path, help=(
    "Labels CSV for the folder layout (default: ROOT/labels.csv); a relative path is read from the current folder, "
    "else from ROOT."))]
UncertainOpt = Annotated[UncertaintyPolicy, typer.Option("--uncertainty", help="CheXpert uncertain labels become: ones, zeros, or ignore (masked).")]
OutsideOpt = Annotated[bool, typer.Option("--allow-outside-root", help="Accept labels-CSV paths that point outside ROOT.")]
IUMappingOpt = Annotated[str, typer.Option("--iu-mapping", help="IU MeSH mapping: published (reproduces the published IU-35 counts) or clinical (docs/iu-labels.md).")]
VerifyOpt = Annotated[bool, typer.Option("--verify", help="Decode every image (slow) instead of checking headers.")]
DbOpt = Annotated[Path | None, typer.Option("--db", help="Study index database (default: the user data dir).")]
ReviewsDbOpt = Annotated[Path | None, typer.Option("--db", help="Reviews database (default: reviews.sqlite in the user data dir).")]
RunsDirOpt = Annotated[Path | None, typer.Option("--runs-dir", help="Where runs live (default: the user data dir).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Checkpoint file, run directory or run id.", show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda, mps, cpu) or a torch device such as cuda:1.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Images per batch (default 8 on CPU, 64 on CUDA).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Decoding processes (default: on a CPU, threads taking turns with the model; on a GPU, spare cores).")]
TtaOpt = Annotated[str | None, typer.Option("--tta", help=f"Test-time augmentation, comma-separated: {', '.join(TTA_CHOICES)}.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model (worth it for large runs on a GPU).")]
Fp32Opt = Annotated[bool, typer.Option("--fp32", help="Run the model in float32 (default: bf16 autocast where the hardware computes it natively: CUDA GPUs, CPUs with AVX512-BF16 or AMX; probabilities within ~0.02 of float32).")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Recompute even when the prediction cache has the answer.")]
ThresholdsOpt = Annotated[Path | None, typer.Option("--thresholds", help="Thresholds JSON (default: the model's own: its run's thresholds.json, or the file the TUI saved for it; else 0.5 for every label).", show_default=False)]
ReaderOpt = Annotated[str | None, typer.Option("--reader", help="Record decisions under this name (several readers of one data set each get their own; default: CXR_READER, else your login name).", show_default=False)]
