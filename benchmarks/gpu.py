"""Per-trial cost and statistics-pass overhead on a GPU: per_trial.py's and capture_overhead.py's measurements
with the model, its statistics pass, the evaluation caches and the naive method's states on ``--device``.

Model: the ViT-B/16 architecture (timm ``vit_base_patch16_224``, random weights) at 224 px (197 tokens of
D = 768) on synthetic images and labels: 3,000 calibration images (591k vectors per boundary), 1,000 probe and
1,000 eval images, every span of its 12 blocks (78). The naive side is the authors' code path on the device:
every boundary's calibration vectors materialised there, float32 ``torch.linalg.lstsq`` per span (CUDA's one
driver, 'gels'), a full forward over the probe and eval splits per trial. rba's side is what the library does
with ``model.device = "cuda"``: the statistics pass on the GPU (float32 products into float64 totals there),
span fits in float64 on the CPU from those statistics, evaluation with prefix reuse on the GPU. Every timed
region starts and ends with ``torch.cuda.synchronize()`` (``_common.timed``); cuBLAS, cuSOLVER and cuDNN are
warmed up first. Printed: the card, torch and CUDA versions, absolute times, ratios and peak GPU memory per
part; ``--json`` gets every number, rewritten after each part (a run stopped later keeps what it finished).

    python benchmarks/gpu.py --device cuda --json out.json   # the full run (a few minutes on an H200)
    python benchmarks/gpu.py --quick                         # tiny ViT on the CPU: the same code path
    bash benchmarks/gpu_run.sh                               # on the GPU machine: wheels, nvidia-smi, this
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import capture_overhead
import per_trial
import torch

#: the tiny model of ``--quick`` (numbers meaningless: a smoke test of the code path)
QUICK = {"depth": 4, "width": 32, "heads": 2, "image_size": 32, "patch": 8}


def device_info(device: str) -> dict[str, Any]:
    info = {"type": device, "torch": torch.__version__, "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info |= {"name": torch.cuda.get_device_name(0), "capability": f"{p.major}.{p.minor}",
                 "memory_gib": p.total_memory / 2**30, "cudnn": torch.backends.cudnn.version(),
                 "float32_matmul_precision": torch.get_float32_matmul_precision()}
    else:
        info["name"] = C.machine().split(",")[0]
    return info


@torch.inference_mode()
def warm_up(device: str, *, d: int = 768) -> float:
    """One call of each library the measured code uses (cuBLAS in float32 and float64, cuSOLVER's QR and
    Cholesky, cuDNN's convolution, attention) at width ``d``, so no timed region pays their initialisation."""
    t0 = time.perf_counter()
    g = torch.Generator(device=device).manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(4 * d, d + 1, device=device, dtype=dtype, generator=g)
        (a.T @ a).sum().item()
    x = torch.randn(8 * d, d + 1, device=device, generator=g)
    torch.linalg.lstsq(x, x[:, :d]).solution.sum().item()
    torch.linalg.cholesky((x.T @ x).double() + torch.eye(d + 1, device=device, dtype=torch.float64)).sum().item()
    conv = torch.nn.Conv2d(3, d, 16, stride=16).to(device)
    conv(torch.randn(8, 3, 224, 224, device=device, generator=g)).sum().item()
    q = torch.randn(8, max(1, d // 64), 197, 64, device=device, generator=g)
    torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().item()
    C.sync()
    return time.perf_counter() - t0


def gpu_memory() -> dict[str, float]:
    if not torch.cuda.is_initialized():
        return {}
    return {"peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}


def reset_memory() -> None:
    C.free()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def vit(cache, args, *, probe: int, eval: int):
    """The configuration of one part: ViT-B/16 at ``--image-size`` (tiny in quick mode) on ``args.device``."""
    arch = QUICK if args.quick else {"depth": 12, "width": 768, "heads": 12, "image_size": args.image_size,
                                     "patch": 16}
    cfg = C.vit_config(cache, calibration=args.calibration, probe=probe, eval=eval, capture_batch=args.batch,
                       eval_batch=args.batch, **arch)
    cfg.model.device = args.device
    return cfg


def capture_part(cache, args, label: str) -> dict[str, Any]:
    cfg = vit(cache, args, probe=0, eval=0)
    rows = capture_overhead.measure(label, cfg, max_span=args.capture_max_span, batch_sizes=args.capture_batches,
                                    repeats=args.repeats)
    return {"rows": rows, "gpu_memory": gpu_memory()}


def trial_part(cache, args, label: str) -> dict[str, Any]:
    cfg = vit(cache, args, probe=args.probe, eval=args.eval)
    res = per_trial.bench_model(label, cfg, n_configs=args.configs, lstsq_spans=args.lstsq_spans)
    out = {k: v for k, v in res.items() if k not in ("session", "naive")}
    out["gpu_memory"] = gpu_memory()
    return out


def summary(payload: dict[str, Any]) -> None:
    """The compact summary: one table of absolute times, then the ratio lines (last, as every script)."""
    dev, parts = payload["device"], payload["parts"]
    where = f"{dev['type']}: {dev['name']}, torch {dev['torch']}, CUDA {dev['cuda']}"
    on = f"on {dev['type']}"
    rows = []
    if "capture" in parts:
        for r in parts["capture"]["rows"]:
            rows.append({"part": f"capture, batch {r['batch']}", "baseline": f"forward {C.fmt_s(r['forward_s'])}",
                         "rba": f"capture {C.fmt_s(r['capture_s'])}", "ratio": r["ratio"],
                         "peak GPU MiB": parts["capture"]["gpu_memory"].get("peak_allocated_mib", "n/a")})
    if "trial" in parts:
        t, f, s = parts["trial"]["trial"], parts["trial"]["fits"], parts["trial"]["setup"]
        mem = parts["trial"]["gpu_memory"].get("peak_allocated_mib", "n/a")
        rows.append({"part": "setup", "baseline": f"materialise {C.fmt_s(s['naive_materialise_s'])} "
                     f"({s['naive_states_mb']:,.0f} MiB)", "rba": f"capture {C.fmt_s(s['rba_capture_s'])}, caches "
                     f"{C.fmt_s(s.get('rba_cache_probe_eval_s', float('nan')))}", "ratio": float("nan"), "peak GPU MiB": mem})
        rows.append({"part": f"span fits ({f['spans']})", "baseline": f"lstsq {C.fmt_s(f['lstsq_total_s'])}",
                     "rba": f"cold {C.fmt_s(f['stats_fit_total_s'])}", "ratio": f["ratio"], "peak GPU MiB": mem})
        if t:
            rows.append({"part": f"trial (median of {len(parts['trial']['trials'])})",
                         "baseline": C.fmt_s(t["naive_median_s"]), "rba": f"cold {C.fmt_s(t['rba_cold_median_s'])}",
                         "ratio": t["ratio_cold_median"], "peak GPU MiB": mem})
    C.table(rows, title=f"summary: {where}")
    if payload["skipped"]:
        print(f"# skipped (past --time-limit): {', '.join(payload['skipped'])}", flush=True)
    for r in parts.get("capture", {}).get("rows", []):
        C.ratio_line(f"capture / forward {on} [{r['model']}, batch {r['batch']}]", r["ratio"],
                     detail=f"{C.fmt_s(r['capture_s'])} vs {C.fmt_s(r['forward_s'])}; {r['spans']} spans, "
                            f"{r['samples']} images; {dev['name']}")
    if "trial" in parts:
        f, t = parts["trial"]["fits"], parts["trial"]["trial"]
        C.ratio_line(f"span fit, lstsq / statistics, cold {on}", f["ratio"],
                     detail=f"authors' float32 lstsq {on} {C.fmt_s(f['lstsq_total_s'])} (timed on "
                            f"{f['lstsq_spans_timed']} of {f['spans']} spans) vs cold fits from statistics "
                            f"{C.fmt_s(f['stats_fit_total_s'])}; {f['vectors']:,} vectors; {dev['name']}")
        if t:
            C.ratio_line(f"trial, naive / rba cold {on}", t["ratio_cold_median"],
                         detail=f"median of {len(parts['trial']['trials'])}, interleaved: "
                                f"{C.fmt_s(t['naive_median_s'])} vs {C.fmt_s(t['rba_cold_median_s'])}; {dev['name']}")
            C.ratio_line(f"trial, naive / rba in search {on}", t["ratio_search_median"],
                         detail=f"{C.fmt_s(t['naive_median_s'])} vs {C.fmt_s(t['rba_search_median_s'])}; fits and "
                                f"memo kept")


def _fail(message: str) -> None:
    """A bad argument: one line on stderr, exit status 2, before any work."""
    print(f"gpu.py: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model and both methods run")
    p.add_argument("--calibration", type=int, default=None, help="calibration images (default 3000; quick 64)")
    p.add_argument("--probe", type=int, default=None, help="probe images (default 1000; quick 32)")
    p.add_argument("--eval", type=int, default=None, help="eval images (default 1000; quick 32)")
    p.add_argument("--image-size", type=int, default=224, help="input size of the ViT-B/16 (patch 16)")
    p.add_argument("--batch", type=int, default=128, help="batch size of the per-trial part (capture and evaluation)")
    p.add_argument("--capture-batches", type=int, nargs="+", default=None,
                   help="batch sizes of the capture part (default 64 256; quick 16 32)")
    p.add_argument("--repeats", type=int, default=None, help="capture part: alternating repeats (default 3; quick 1)")
    p.add_argument("--capture-max-span", type=int, default=None,
                   help="capture part: longest span with statistics (default: all, 78 spans at 12 blocks)")
    p.add_argument("--configs", type=int, default=None, help="random configurations (default 5; quick 2)")
    p.add_argument("--lstsq-spans", type=int, default=None,
                   help="spans whose lstsq is timed, extrapolated per span to all (every span of a ViT solves the "
                        "same n × 769 system; default 6; quick 3)")
    p.add_argument("--parts", default="capture,trial", help="comma-separated, in this order: capture, trial")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds: a part not started by then is skipped (listed in the output and JSON)")
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (("calibration", 3000, 64), ("probe", 1000, 32), ("eval", 1000, 32),
                              ("capture_batches", [64, 256], [16, 32]), ("repeats", 3, 1), ("configs", 5, 2),
                              ("lstsq_spans", 6, 3)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if quick:
        args.batch = min(args.batch, 16)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - {"capture", "trial"})
    if unknown:  # checked before any work
        _fail(f"--parts {','.join(unknown)}: the parts are capture and trial")
    if args.device == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda but torch sees no CUDA GPU on this machine: use --device cpu")
    t_start = time.perf_counter()
    C.setup(args)
    payload: dict[str, Any] = {"device": device_info(args.device), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                           for k, v in vars(args).items()},
                               "parts": {}, "skipped": [], "load": {"start": C.load()}}
    payload["warm_up_s"] = warm_up(args.device, d=QUICK["width"] if quick else 768)
    dev = payload["device"]
    print(f"# device: {dev['name']}; torch {dev['torch']}, CUDA {dev['cuda']}; {dev['torch_threads']} CPU threads; "
          f"warm-up {C.fmt_s(payload['warm_up_s'])}", flush=True)
    C.write_json(args.json, payload)  # the card and versions, whatever happens next
    model = "tiny ViT" if quick else f"ViT-B/16 arch, random ({args.image_size} px)"
    label = f"{model} on {args.device} (cal {args.calibration} / probe {args.probe} / eval {args.eval})"
    run = {"capture": capture_part, "trial": trial_part}
    with C.temp_cache() as cache:
        for part in parts:
            elapsed = time.perf_counter() - t_start
            if args.time_limit is not None and elapsed > args.time_limit:
                payload["skipped"].append(part)
                continue
            reset_memory()
            print(f"\n# part {part}: load at start {C.load()}, {elapsed:.0f} s into the run", flush=True)
            payload["parts"][part] = run[part](cache, args, label)
            payload["parts"][part]["load_end"] = C.load()
            payload["parts"][part]["wall_s"] = time.perf_counter() - t_start - elapsed
            print(f"# part {part}: load at end {C.load()}, took {payload['parts'][part]['wall_s']:.0f} s", flush=True)
            payload["load"]["end"] = C.load()
            C.write_json(args.json, payload)  # after every part: finished work is never lost
            reset_memory()
    payload["wall_s"] = time.perf_counter() - t_start
    C.write_json(args.json, payload)
    summary(payload)
    unequal = payload["parts"].get("trial", {}).get("unequal", [])
    if unequal:  # after every number is out: the run fails, its results stay
        raise SystemExit("results differ beyond tolerance: " + "; ".join(unequal))


if __name__ == "__main__":
    main()
