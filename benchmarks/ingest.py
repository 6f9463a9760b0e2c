"""Ingest speed: ``load_study`` (de-identification on) vs SimpleITK's ImageSeriesReader vs a plain pydicom loop.

One uncompressed CT series (512×512×300, or 512×512×60 with ``--quick``) written by the phantom
generator (``data.phantoms``) as real DICOM files. Each reader goes from the folder to an HU volume
(series discovery, slice ordering, pixels, rescale); the three run interleaved, ``--repeats`` times
each after one warm-up pass (files in the page cache), and the best time of each is compared.

    python benchmarks/ingest.py [--quick] [--repeats N] [--keep DIR]

Writes ``benchmarks/results/ingest.json`` (ratios ``vs_simpleitk`` and ``vs_pydicom_loop``: our time ÷
theirs, lower is better) and ``benchmarks/results/ingest.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def write_series(folder: Path, shape: tuple[int, int, int]) -> tuple[Path, str]:
    """Write the CT series; returns (folder with the .dcm files, which writer made it)."""
    import importlib.util

    if importlib.util.find_spec("data.phantoms") is not None:
        from data.phantoms import generate, write_study

        case = generate("ct", seed=0, shape=shape)
        study = write_study(case, folder)
        return next(p for p in (study / "dicom").iterdir() if p.is_dir()), "data.phantoms.write_study"
    raise SystemExit("data.phantoms is missing: the benchmark needs the phantom writer for its CT series.")


def read_ours(folder: Path) -> np.ndarray:
    from data import load_study

    return load_study(folder, deidentify=True).series[0].volume.array


def read_simpleitk(folder: Path) -> tuple[np.ndarray, object]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return sitk.GetArrayViewFromImage(image), image  # (k, j, i) without a copy; the view needs its image alive


def read_pydicom_loop(folder: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))
    return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])  # (k, j, i)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512×512×60 instead of 512×512×300")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="write the series here and keep it")
    args = parser.parse_args(argv)
    shape = (512, 512, 60 if args.quick else 300)
    with tempfile.TemporaryDirectory(prefix="m3-bench-ingest-") as tmp:
        base = args.keep or Path(tmp)
        started = time.perf_counter()
        folder, writer = write_series(base / "study", shape)
        write_s = time.perf_counter() - started
        n_files = len(list(folder.iterdir()))
        contenders = {"load_study": read_ours, "simpleitk": read_simpleitk, "pydicom_loop": read_pydicom_loop}
        outputs = {name: fn(folder) for name, fn in contenders.items()}  # warm-up: imports, page cache
        ours = outputs["load_study"].transpose(2, 1, 0)  # (i, j, k) → (k, j, i)
        agree = {name: bool(np.array_equal(ours, out[0] if isinstance(out, tuple) else out))
                 for name, out in outputs.items() if name != "load_study"}
        del outputs
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeats):
            for name, fn in contenders.items():
                gc.collect()
                t0 = time.perf_counter()
                out = fn(folder)
                times[name].append(time.perf_counter() - t0)
                del out
    best = {name: min(ts) for name, ts in times.items()}
    ratios = {
        "vs_simpleitk": {"value": round(best["load_study"] / best["simpleitk"], 3), "target": 1.0, "better": "lower"},
        "vs_pydicom_loop": {"value": round(best["load_study"] / best["pydicom_loop"], 3), "target": 1.0, "better": "lower"},
    }
    result = {
        "benchmark": "ingest",
        "ratios": ratios,
        "details": {
            "quick": args.quick, "shape": list(shape), "files": n_files, "writer": writer, "write_s": round(write_s, 2),
            "repeats": args.repeats, "deidentify": True,
            "best_s": {k: round(v, 4) for k, v in best.items()},
            "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
            "same_voxels_as": agree, "cpus": os.cpu_count(), "python": platform.python_version(),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "ingest.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


def _markdown(result: dict) -> str:
    d = result["details"]
    lines = [f"# ingest benchmark ({'x'.join(map(str, d['shape']))}, {d['files']} files, de-identification on)", "",
             "| reader | best s | median s | same voxels as load_study |", "|---|---:|---:|---|"]
    for name in d["best_s"]:
        same = "—" if name == "load_study" else ("yes" if d["same_voxels_as"].get(name) else "no")
        lines.append(f"| {name} | {d['best_s'][name]:.3f} | {d['median_s'][name]:.3f} | {same} |")
    lines += ["", "| ratio (our time ÷ theirs) | value | target |", "|---|---:|---:|"]
    for key, r in result["ratios"].items():
        lines.append(f"| {key} | {r['value']:.3f} | ≤ {r['target']} |")
    lines += ["", f"{d['repeats']} interleaved repeats after a warm-up, {d['cpus']} CPUs; series written by {d['writer']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
