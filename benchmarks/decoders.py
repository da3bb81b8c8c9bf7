"""PNG (and grey JPEG) decoders on chest films: Pillow, pyspng, OpenCV, torchvision.io; print and write JSON.

``pillow`` is ``Image.open`` + ``load`` + ``np.asarray`` (a copy); ``pillow-direct`` has Pillow decode straight into
the NumPy array (no copy), as :mod:`cxr_core.images.raster` does for grey images. pyspng and OpenCV are measured
when installed (``pip install pyspng opencv-python-headless``; cxr does not need them).

For each decoder available here, on 8-bit grey 1024x1024 PNGs (the real NIH PNGs), 16-bit grey PNGs synthesised
from them (12 significant bits, as DICOM exports store them: each 8-bit value times 16 plus film noise in the low
bits) and 8-bit grey JPEGs made from them (quality 95): milliseconds per image on one core (decoding from bytes
in memory, the median of ``--repeat`` passes), images per second with one thread per core (a decoder that holds
the GIL does not scale), and whether its pixels are identical to Pillow's (the reference: what cxr decoded until
now, and what the image cache and every trained model saw). Last, the product's own path: one file decoded by
:func:`cxr_core.images.read_xray` and letterboxed to 224 (``load_letterboxed``), with each decoder the reader can
use, which is what bounds prediction and cache building (cores / that time = the host's decode limit).

Images: ``--images DIR`` (PNG files), else ``$CXR_REAL_DATA/nih-sample/images_001/images``, else synthetic PNGs
that compress like them. Nothing is written beside the images (the 16-bit and JPEG copies live in a temp folder).

    python benchmarks/decoders.py [--images DIR] [--count 40] [--repeat 3] [--out benchmarks/out/decoders.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

Decoder = Callable[[bytes], np.ndarray]


def _pillow(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def _pillow_direct(data: bytes) -> np.ndarray:
    """Pillow decoding straight into a NumPy array (what cxr's reader does for grey images): no copy."""
    image = Image.open(io.BytesIO(data))
    pixels = np.empty((image.size[1], image.size[0]), np.uint8 if image.mode == "L" else "<u2")
    core = Image.frombuffer(image.mode, image.size, pixels, "raw", image.mode, 0, 1).im
    image.im = core
    image.load()
    return pixels if image.im is core else np.asarray(image)


def decoders() -> tuple[dict[str, tuple[Decoder, str, tuple[str, ...]]], dict[str, str]]:
    """name -> (decode(bytes) -> array, version, formats it handles); and name -> why it is missing."""
    import PIL

    found: dict[str, tuple[Decoder, str, tuple[str, ...]]] = {
        "pillow": (_pillow, PIL.__version__, ("png", "jpeg")),
        "pillow-direct": (_pillow_direct, PIL.__version__, ("png", "jpeg"))}
    missing: dict[str, str] = {}
    try:
        import pyspng

        version = getattr(pyspng, "__version__", None) or _dist_version("pyspng")
        found["pyspng"] = (lambda data: pyspng.load(data), version, ("png",))
    except ImportError as err:
        missing["pyspng"] = f"not installed ({err})"
    try:
        import cv2

        def _cv2(data: bytes) -> np.ndarray:
            return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)

        found["opencv"] = (_cv2, cv2.__version__, ("png", "jpeg"))
    except ImportError as err:
        missing["opencv"] = f"not installed ({err})"
    try:
        import torch
        import torchvision
        from torchvision.io import ImageReadMode, decode_jpeg, decode_png

        def _tv_png(data: bytes) -> np.ndarray:
            return decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED).numpy()

        def _tv_jpeg(data: bytes) -> np.ndarray:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED).numpy()

        found["torchvision"] = (_tv_png, torchvision.__version__, ("png",))
        found["torchvision-jpeg"] = (_tv_jpeg, torchvision.__version__, ("jpeg",))
    except ImportError as err:
        missing["torchvision"] = f"not installed ({err})"
    return found, missing


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def source_pngs(folder: Path | None, count: int, tmp: Path) -> tuple[list[Path], str]:
    if folder is None and os.environ.get("CXR_REAL_DATA"):
        folder = Path(os.environ["CXR_REAL_DATA"]) / "nih-sample" / "images_001" / "images"
    if folder is not None and folder.is_dir():
        files = sorted(folder.glob("*.png"))[:count]
        if files:
            return files, f"{len(files)} real PNGs from {folder}"
    from train_throughput import synthetic_pngs

    made = tmp / "synthetic"
    names = synthetic_pngs(made, min(count, 20))
    return [made / n for n in names], f"{len(names)} synthetic 1024x1024 PNGs (no real PNGs given)"


def variants(files: list[Path], tmp: Path) -> dict[str, list[Path]]:
    """The 8-bit PNGs as given, 16-bit grey PNGs and 8-bit grey JPEGs made from them (in ``tmp``)."""
    rng = np.random.default_rng(0)
    deep, jpegs = tmp / "png16", tmp / "jpeg"
    deep.mkdir(exist_ok=True)
    jpegs.mkdir(exist_ok=True)
    out: dict[str, list[Path]] = {"png8": list(files), "png16": [], "jpeg8": []}
    for path in files:
        grey = np.asarray(Image.open(path).convert("L"))
        twelve = grey.astype(np.uint16) * 16 + rng.integers(0, 16, grey.shape, dtype=np.uint16)
        target = deep / path.name
        Image.fromarray(twelve).save(target)  # uint16 -> I;16
        out["png16"].append(target)
        target = jpegs / (path.stem + ".jpg")
        Image.fromarray(grey).save(target, quality=95)
        out["jpeg8"].append(target)
    return out


def one_pass_ms(decode: Decoder, blobs: list[bytes]) -> float:
    start = time.perf_counter()
    for blob in blobs:
        decode(blob)
    return (time.perf_counter() - start) / len(blobs) * 1000


def threaded_img_s(decode: Decoder, blobs: list[bytes], threads: int) -> float:
    work = blobs * 2
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, blobs[:threads]))  # threads started
        start = time.perf_counter()
        list(pool.map(decode, work))
        return len(work) / (time.perf_counter() - start)


def product_path(files: list[Path], size: int, repeat: int) -> dict[str, dict]:
    """``load_letterboxed`` (read_xray + letterbox) per file, one core, with each decoder the reader can use."""
    from cxr_core.data.preprocess import load_letterboxed
    from cxr_core.images import raster

    available = getattr(raster, "available_decoders", lambda: ["pillow"])()
    chosen = getattr(raster, "decoder_name", lambda: "pillow")()
    times: dict[str, list[float]] = {name: [] for name in available}
    sums: dict[str, int] = {}
    for path in files[:3]:
        load_letterboxed(path, size)  # warm
    for _ in range(max(repeat, 3)):  # rounds over the decoders in turn
        for name in available:
            with _forced(raster, name):
                start = time.perf_counter()
                for path in files:
                    sums[name] = int(load_letterboxed(path, size).sum())
                times[name].append((time.perf_counter() - start) / len(files))
    return {name: {"decode_letterbox_ms": round(statistics.median(times[name]) * 1000, 2), "default": name == chosen,
                   "speed_vs_default": round(statistics.median([a / b for a, b in zip(times[available[0]], times[name],
                                                                                 strict=True)]), 3),
                   "last_pixels_sum": sums.get(name)} for name in available}


class _forced:
    """Make the reader use decoder ``name`` for a while (raster.force_decoder when the reader has it)."""

    def __init__(self, raster, name: str):
        self.raster, self.name, self.previous = raster, name, None

    def __enter__(self):
        force = getattr(self.raster, "force_decoder", None)
        if force is not None:
            self.previous = force(self.name)

    def __exit__(self, *exc):
        force = getattr(self.raster, "force_decoder", None)
        if force is not None:
            force(self.previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None, help="a folder of PNGs (default: the NIH sample)")
    parser.add_argument("--count", type=int, default=40, help="files to decode (each pass)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="letterbox size of the product path")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "decoders.json")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    found, missing = decoders()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files, source = source_pngs(args.images, args.count, tmp)
        sets = variants(files, tmp)
        rows = []
        for kind, paths in sets.items():
            blobs = [p.read_bytes() for p in paths]
            fmt = "jpeg" if kind.startswith("jpeg") else "png"
            reference = [_pillow(b) for b in blobs]
            usable = {}
            for name, (decode, version, formats) in found.items():
                if fmt not in formats:
                    continue
                try:
                    pixels = [np.squeeze(decode(b)) for b in blobs]
                except Exception as err:  # a decoder that cannot read this kind at all
                    rows.append({"images": kind, "decoder": name, "version": version, "error": str(err)[:120]})
                    continue
                identical = all(p.dtype == r.dtype and np.array_equal(p, r)
                                for p, r in zip(pixels, reference, strict=True))
                usable[name] = (decode, version, identical, str(pixels[0].dtype))
            # Rounds over all decoders in turn (this machine's speed drifts): medians of each decoder's passes.
            single = {name: [] for name in usable}
            threaded = {name: [] for name in usable}
            for _ in range(args.repeat):
                for name, (decode, *_rest) in usable.items():
                    single[name].append(one_pass_ms(decode, blobs))
                    threaded[name].append(threaded_img_s(decode, blobs, cores))
            for name, (_, version, identical, dtype) in usable.items():
                one, many = statistics.median(single[name]), statistics.median(threaded[name])
                rows.append({"images": kind, "decoder": name.replace("-jpeg", ""), "version": version,
                             "ms_one_core": round(one, 2), "img_s_one_core": round(1000 / one, 1),
                             f"img_s_{cores}_threads": round(many, 1), "thread_scaling": round(many * one / 1000, 2),
                             "dtype": dtype, "identical_to_pillow": bool(identical)})
        for kind in sets:
            mine = [r for r in rows if r["images"] == kind and "ms_one_core" in r]
            pillow = next((r for r in mine if r["decoder"] == "pillow"), None)
            for row in mine:
                if pillow:
                    row["speedup_vs_pillow"] = round(pillow["ms_one_core"] / row["ms_one_core"], 3)
        product = product_path(sets["png8"], args.size, args.repeat)
        product16 = product_path(sets["png16"], args.size, args.repeat)
    fastest = {kind: min((r for r in rows if r["images"] == kind and r.get("identical_to_pillow")),
                         key=lambda r: r["ms_one_core"])["decoder"] for kind in sets}
    best_ms = min(v["decode_letterbox_ms"] for v in product.values())
    headline = {}
    for kind in sets:
        mine = {r["decoder"]: r for r in rows if r["images"] == kind and r.get("identical_to_pillow")}
        if "pillow" in mine:
            best = mine[fastest[kind]]
            threads = f"img_s_{cores}_threads"
            headline[f"{kind}_fastest_vs_pillow"] = round(mine["pillow"]["ms_one_core"] / best["ms_one_core"], 3)
            headline[f"{kind}_threaded_best_vs_pillow"] = round(
                max(r[threads] for r in mine.values()) / mine["pillow"][threads], 3)
    report = {
        "benchmark": "decoders", "source": source, "cores": cores, "repeat": args.repeat,
        "rows": rows, "missing": missing, "fastest_identical": fastest, **headline,
        "product_path_png8": product, "product_path_png16": product16,
        "decode_limit_img_s": round(cores * 1000 / best_ms, 1),
        "cpu": _cpu(), "python": platform.python_version(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(f"{source}; {cores} cores; load {report['load_average']}")
    print(f"{'images':7} {'decoder':12} {'version':10} {'ms/img 1 core':>13} {'vs Pillow':>9} "
          f"{f'img/s {cores} thr':>12} {'scaling':>7} identical")
    for r in rows:
        if "error" in r:
            print(f"{r['images']:7} {r['decoder']:12} {r['version']:10} error: {r['error']}")
            continue
        print(f"{r['images']:7} {r['decoder']:12} {r['version']:10} {r['ms_one_core']:13.2f} "
              f"{r.get('speedup_vs_pillow', 1):9.2f} {r[f'img_s_{cores}_threads']:12.1f} {r['thread_scaling']:7.2f} "
              f"{r['identical_to_pillow']}")
    for name, why in missing.items():
        print(f"{'':7} {name:12} {why}")
    for label, table in (("png8", product), ("png16", product16)):
        for name, entry in table.items():
            print(f"read_xray + letterbox {args.size}, {label}, {name}{' (default)' if entry['default'] else ''}: "
                  f"{entry['decode_letterbox_ms']} ms (speed vs default {entry['speed_vs_default']})")
    print(f"decode limit (cores / best decode+letterbox): {report['decode_limit_img_s']} img/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


if __name__ == "__main__":
    main()
