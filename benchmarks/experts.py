"""Benchmark: ``ct_segmentation`` on a 256³ CT against a bare MONAI ``sliding_window_inference`` call
with the same network and weights, in the same run.

The volume is a phantom on the model's own 3 mm grid (stored LPS, as DICOM is), so both sides run the
network on the same 256³ voxels; the ratio ``vs_bare_monai`` (our ``run`` time ÷ bare time) is what the
expert adds around the network: input checks, reorientation, intensity scaling, mapping the labels back
to the input grid, target filtering, volumes, lesion components and diameters. Each side runs in its own
fresh process so its peak memory (max RSS) is its own. ``--quick`` uses 128³.

    python benchmarks/experts.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _child(kind: str, npz: str, queue) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from data.study import Volume
    from experts.ct_segmentation import CTSegmentationExpert

    expert = CTSegmentationExpert(device="cpu")
    with torch.inference_mode():  # one-time kernel set-up, outside both timings
        expert.network(torch.zeros(1, 3, 32, 32, 32))
    stored = np.load(npz)
    volume = Volume(stored["array"], stored["affine"], modality="CT")
    if kind == "bare":
        from monai.inferers import sliding_window_inference

        from experts.ct_segmentation import ct_input

        cfg = expert.config
        x = ct_input(volume, cfg)[None].as_tensor()  # the same network input, prepared outside the timing
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(x, cfg.roi_size, cfg.sw_batch_size, expert.network, overlap=cfg.overlap, mode="gaussian")
        seconds = time.perf_counter() - t0
        extra = {"output_shape": list(logits.shape)}
    else:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        result = expert.run(volume, targets="everything")
        seconds = time.perf_counter() - t0
        extra = {"summary": result.summary, "mask_shape": list(result.label_volume.shape)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"kind": kind, "seconds": seconds, "peak_rss_mb": peak / 1024.0, "rss_before_mb": rss0 / 1024.0, **extra})


def _measure(kind: str, npz: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(kind, npz, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128³ instead of 256³, one repeat (under a minute)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating runs per side (best time kept)")
    args = parser.parse_args(argv)
    size = 128 if args.quick else 256
    repeats = args.repeats or (1 if args.quick else 2)
    sys.path.insert(0, str(ROOT))
    import tempfile

    import numpy as np

    import data.phantoms
    from experts.ct_segmentation import CTSegConfig
    from experts.model_files import load_expert_files

    spacing = CTSegConfig.from_dict(load_expert_files("ct_segmentation")[0]["network"]).spacing_mm
    case = data.phantoms.generate("ct", 30_100, shape=(size, size, size), spacing=spacing, lesion_rate=1.0)
    tmp = tempfile.TemporaryDirectory(prefix="m3-bench-")
    npz = str(Path(tmp.name) / "ct.npz")
    np.savez(npz, array=case.volumes["CT"].array, affine=case.volumes["CT"].affine)
    del case
    runs: dict[str, list[dict]] = {"bare": [], "ours": []}
    for r in range(repeats):
        for kind in ("bare", "ours"):
            runs[kind].append(_measure(kind, npz))
            print(f"repeat {r + 1}/{repeats} {kind:>4}: {runs[kind][-1]['seconds']:.2f} s, peak RSS {runs[kind][-1]['peak_rss_mb']:.0f} MB", flush=True)
    bare = min(x["seconds"] for x in runs["bare"])
    ours = min(x["seconds"] for x in runs["ours"])
    ratio = ours / bare
    result = {
        "benchmark": "experts",
        "ratios": {"vs_bare_monai": {"value": round(ratio, 4), "target": 1.10, "better": "lower"}},
        "details": {
            "volume_shape": [size] * 3, "threads": 1, "repeats": repeats,
            "ours_seconds": round(ours, 3), "bare_seconds": round(bare, 3),
            "ours_peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs["ours"]), 1),
            "bare_peak_rss_mb": round(max(x["peak_rss_mb"] for x in runs["bare"]), 1),
            "ours_peak_increase_mb": round(max(x["peak_rss_mb"] - x["rss_before_mb"] for x in runs["ours"]), 1),
            "bare_peak_increase_mb": round(max(x["peak_rss_mb"] - x["rss_before_mb"] for x in runs["bare"]), 1),
            "summary": runs["ours"][-1]["summary"],
            "quick": args.quick,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "experts.json").write_text(json.dumps(result, indent=2) + "\n")
    d = result["details"]
    table = (
        "# experts benchmark\n\n"
        f"`ct_segmentation` on a {size}³ CT (model grid, 1 thread) vs a bare `sliding_window_inference` call, same network and weights.\n\n"
        "| measure | ours (`expert.run`) | bare MONAI | ratio (target ≤ 1.10) |\n|---|---|---|---|\n"
        f"| time (s) | {d['ours_seconds']} | {d['bare_seconds']} | **{ratio:.3f}** |\n"
        f"| peak RSS (MB) | {d['ours_peak_rss_mb']} | {d['bare_peak_rss_mb']} | |\n"
        f"| peak RSS increase during the call (MB) | {d['ours_peak_increase_mb']} | {d['bare_peak_increase_mb']} | |\n"
    )
    (RESULTS / "experts.md").write_text(table)
    tmp.cleanup()
    print(f"vs_bare_monai = {ratio:.3f} (target <= 1.10); ours {ours:.2f} s, bare {bare:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
