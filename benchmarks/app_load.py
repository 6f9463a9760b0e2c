"""Load on the web app: 8 concurrent sessions, each uploading a study and asking 3 questions, against one
session alone, in the same run, over HTTP (gradio_client) against the app on localhost.

The app runs in its own process (``m3``'s real server: login, queue, ingest, experts, audit). Its chat
model is the scripted test backend (``tests/scripted_backend.py``: a tool call for a measurement
question, then an answer quoting the tool's numbers) unless ``--model DIR`` names a real checkpoint; the
expert is the trained CT segmentation when its weights are present, else the threshold test expert.

Ratios (``benchmarks/results/app_load.json``): ``p95_vs_single`` — p95 latency of an operation (upload or
question) with 8 sessions at once ÷ p95 with one session alone (target ≤ 3); ``errors`` — failed
operations (target 0). Details: p50/p95 per phase, server memory (RSS) before and after each phase, and the
server's CPU time (user + system, its threads and child processes) per phase and per session (the sizing figures
of docs/operations.md).

    python benchmarks/app_load.py --quick      # < 1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
USER, PASSWORD = "bench", "bench password"
QUESTIONS = ("What is the {topic} volume?", "Please measure the {topic} again.", "Anything else to note on this series?")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small study, fewer repeats (< 1 minute)")
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--model", type=Path, help="a real VLM checkpoint folder instead of the scripted backend")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # internal: the server process
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return _serve(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    import psutil

    work = Path(tempfile.mkdtemp(prefix="m3-app-load-"))
    shape = (64, 64, 32) if args.quick else (128, 128, 64)
    study_zip = _phantom_zip(work, shape)
    port = _free_port()
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--workdir", str(work)]
    if args.model:
        cmd += ["--model", str(args.model)]
    server = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server)
        topic = (work / "topic.txt").read_text().strip()
        proc = psutil.Process(server.pid)
        rss = {"start_mb": _rss_mb(proc)}
        cpu, wall = {"start": _cpu_s(proc)}, {"start": time.perf_counter()}
        single_runs = 2 if args.quick else 4
        single = [_session(url, study_zip, topic) for _ in range(single_runs)]
        rss["after_single_mb"] = _rss_mb(proc)
        cpu["after_single"], wall["after_single"] = _cpu_s(proc), time.perf_counter()
        concurrent = _concurrent(url, study_zip, topic, args.sessions)
        rss["after_concurrent_mb"] = _rss_mb(proc)
        cpu["after_concurrent"], wall["after_concurrent"] = _cpu_s(proc), time.perf_counter()
        concurrent2 = [] if args.quick else _concurrent(url, study_zip, topic, args.sessions)
        rss["after_second_concurrent_mb"] = _rss_mb(proc)
        cpu["after_second_concurrent"], wall["after_second_concurrent"] = _cpu_s(proc), time.perf_counter()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # open streaming connections can hold a graceful shutdown
            server.kill()
            server.wait()
    single_ops = [t for s in single for t in s["ops"].values()]
    conc_ops = [t for s in concurrent + concurrent2 for t in s["ops"].values()]
    errors = sum(len(s["errors"]) for s in single + concurrent + concurrent2)
    p95_single, p95_conc = float(np.percentile(single_ops, 95)), float(np.percentile(conc_ops, 95)) if conc_ops else float("nan")
    ratio = p95_conc / p95_single
    details = {
        "sessions": args.sessions, "study_shape": shape, "topic": topic, "quick": args.quick,
        "backend": str(args.model) if args.model else "scripted test backend",
        "single": _stats(single_ops), "concurrent": _stats(conc_ops),
        "per_op_p50_s": {op: {"single": _p(single, op, 50), "concurrent": _p(concurrent + concurrent2, op, 50)} for op in _op_names(single)},
        "per_op_p95_s": {op: {"single": _p(single, op, 95), "concurrent": _p(concurrent + concurrent2, op, 95)} for op in _op_names(single)},
        "memory": rss, "server_cpu": _cpu_phases(cpu, wall, single_runs, args.sessions, concurrent2_ran=bool(concurrent2)),
        "error_messages": [e for s in single + concurrent + concurrent2 for e in s["errors"]][:10],
    }
    result = {"benchmark": "app_load",
              "ratios": {"p95_vs_single": {"value": round(ratio, 3), "target": 3.0, "better": "lower"},
                         "errors": {"value": errors, "target": 0, "better": "lower"}},
              "details": details}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "app_load.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "app_load.md").write_text(_markdown(result))
    print(f"single p50 {details['single']['p50_s']:.3f} s p95 {p95_single:.3f} s; {args.sessions} sessions p50 "
          f"{details['concurrent']['p50_s']:.3f} s p95 {p95_conc:.3f} s; p95_vs_single {ratio:.2f} (target <= 3); "
          f"errors {errors}; server RSS {rss['start_mb']:.0f} -> {rss['after_second_concurrent_mb']:.0f} MB")
    return 0


def _session(url: str, study_zip: Path, topic: str) -> dict:
    """One clinician: log in, upload, ask three questions. Latency per operation, errors as text."""
    from gradio_client import Client, handle_file

    ops: dict[str, float] = {}
    errors: list[str] = []
    try:
        client = Client(url, auth=(USER, PASSWORD), verbose=False)
        t0 = time.perf_counter()
        status = client.predict([handle_file(str(study_zip))], api_name="/upload")[2]
        ops["upload"] = time.perf_counter() - t0
        if "Loaded" not in status:
            errors.append(f"upload: {status}")
        for n, template in enumerate(QUESTIONS, start=1):
            t0 = time.perf_counter()
            chat = client.predict(template.format(topic=topic), api_name="/ask")[0]
            ops[f"question_{n}"] = time.perf_counter() - t0
            last = chat[-1]["content"] if chat else ""
            text = last if isinstance(last, str) else " ".join(x.get("text", "") for x in last if isinstance(x, dict))
            if not text.strip() or "Warning" in text:
                errors.append(f"question {n}: {text[:120]!r}")
        client.close()
    except Exception as exc:  # a failed request is a counted error, not a crash of the benchmark
        errors.append(f"{type(exc).__name__}: {exc}"[:200])
    return {"ops": ops, "errors": errors}


def _concurrent(url: str, study_zip: Path, topic: str, n: int) -> list[dict]:
    out: list[dict] = [{} for _ in range(n)]
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        out[i] = _session(url, study_zip, topic)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return out


def _serve(args: argparse.Namespace) -> int:
    """The server process: the real app with the scripted backend (or ``--model``) and login."""
    import importlib.util

    import torch

    from app.auth import hash_password
    from app.config import AppConfig
    from app.server import serve

    torch.set_num_threads(2)
    spec = importlib.util.spec_from_file_location("m3_scripted_backend", ROOT / "tests" / "scripted_backend.py")
    scripted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scripted)
    registry, _, _, structure = scripted.registry_for_tests()
    (args.workdir / "topic.txt").write_text(structure)
    cfg = AppConfig()
    cfg.server.port = args.port
    cfg.audit.log_path = args.workdir / "audit.jsonl"
    cfg.auth.users_file = args.workdir / "users.toml"
    cfg.auth.users_file.write_text(f'[users]\n{USER} = "{hash_password(PASSWORD)}"\n')
    if args.model:
        cfg.models.model_dir = args.model
    serve(cfg, backend=None if args.model else scripted.ScriptedBackend(), registry=registry)
    return 0


def _phantom_zip(work: Path, shape: tuple[int, int, int]) -> Path:
    from data.phantoms import DICOM_DIRNAME, generate, write_study

    study = write_study(generate("ct", 11, shape=shape), work / "study")
    archive = work / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((study / DICOM_DIRNAME).rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(study))
    return archive


def _wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the app process exited with code {server.returncode} before answering")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the app did not answer {url}/healthz within {timeout_s:.0f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(proc) -> float:
    return proc.memory_info().rss / 2**20


def _cpu_s(proc) -> float:
    """CPU seconds (user + system) the server process and its children have used so far."""
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _cpu_phases(cpu: dict, wall: dict, single_runs: int, sessions: int, concurrent2_ran: bool) -> dict:
    """Server CPU seconds per phase, per session, and the mean cores busy during the concurrent phase(s)."""
    single_s = cpu["after_single"] - cpu["start"]
    end = "after_second_concurrent" if concurrent2_ran else "after_concurrent"
    conc_s = cpu[end] - cpu["after_single"]
    conc_sessions = sessions * (2 if concurrent2_ran else 1)
    return {"single_s": round(single_s, 2), "concurrent_s": round(conc_s, 2),
            "per_session_single_s": round(single_s / single_runs, 2),
            "per_session_concurrent_s": round(conc_s / conc_sessions, 2),
            "cores_busy_concurrent": round(conc_s / (wall[end] - wall["after_single"]), 2)}


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50_s": float("nan"), "p95_s": float("nan")}
    return {"n": len(values), "p50_s": round(float(np.percentile(values, 50)), 4), "p95_s": round(float(np.percentile(values, 95)), 4)}


def _op_names(sessions: list[dict]) -> list[str]:
    return list(dict.fromkeys(op for s in sessions for op in s["ops"]))


def _p(sessions: list[dict], op: str, q: int) -> float | None:
    values = [s["ops"][op] for s in sessions if op in s["ops"]]
    return round(float(np.percentile(values, q)), 4) if values else None


def _markdown(result: dict) -> str:
    d = result["details"]
    lines = [f"# app_load ({d['sessions']} concurrent sessions vs one, {d['backend']}, study {d['study_shape']})", "",
             "| ratio | value | target |", "|---|---|---|"]
    lines += [f"| {k} | {v['value']} | {'≤' if v['better'] == 'lower' else '≥'} {v['target']} |" for k, v in result["ratios"].items()]
    lines += ["", "| operation | p50 single (s) | p50 concurrent (s) | p95 single (s) | p95 concurrent (s) |", "|---|---|---|---|---|"]
    for op in d["per_op_p50_s"]:
        lines.append(f"| {op} | {d['per_op_p50_s'][op]['single']} | {d['per_op_p50_s'][op]['concurrent']} | "
                     f"{d['per_op_p95_s'][op]['single']} | {d['per_op_p95_s'][op]['concurrent']} |")
    m = d["memory"]
    lines += ["", f"Server RSS: start {m['start_mb']:.0f} MB, after single sessions {m['after_single_mb']:.0f} MB, after "
              f"{d['sessions']} concurrent sessions {m['after_concurrent_mb']:.0f} MB"
              + ("." if d["quick"] else f", after {d['sessions']} more {m['after_second_concurrent_mb']:.0f} MB.")]
    c = d["server_cpu"]
    lines += [f"Server CPU (user + system): {c['per_session_single_s']} s per session alone, "
              f"{c['per_session_concurrent_s']} s per session with {d['sessions']} at once "
              f"({c['cores_busy_concurrent']} cores busy on average while they ran).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
