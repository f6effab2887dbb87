"""The GPU check's verdict (issue 17's bar) and its Markdown report, from the JSON report (see check.py)."""
from __future__ import annotations


def verdict(rep: dict) -> dict:
    rows = [r for r in rep.get("rows", []) if r.get("status") == "ok"]
    bf16g = [r for r in rows if r.get("backend") == "torch" and r.get("precision") == "bf16" and r.get("cuda_graph")]
    best = max(bf16g, key=lambda r: r["images_per_s_1000"], default=None)
    v = {"dry_run": rep.get("dry"),
         "pytest_all_pass": (rep.get("pytest") or {}).get("ok"),
         "best_bf16_cuda_graph": ({"batch": best["batch"], "images_per_s_1000": best["images_per_s_1000"],
                                   "kernels": best.get("kernels", "portable"),
                                   "ratio_vs_seed_loop": best.get("ratio_vs_seed_loop"),
                                   "share_of_bf16_roofline": best.get("share_of_bf16_roofline")} if best else None)}
    if rep.get("dry"):
        v["done_when_met"] = None
        v["note"] = "dry run on CPU: not a GPU proof"
    elif best:
        v["target_300_images_per_s"] = best["images_per_s_1000"] >= 300
        v["target_50x_seed_loop"] = (best.get("ratio_vs_seed_loop") or 0) >= 50
        v["done_when_met"] = bool(v["pytest_all_pass"] and v["target_300_images_per_s"] and v["target_50x_seed_loop"])
    else:
        v["done_when_met"] = False
    return v


def _f(x, fmt="{:.2f}", none="—") -> str:
    if x is None:
        return none
    try:
        return fmt.format(x)
    except (TypeError, ValueError):
        return str(x)


def _graph(g) -> str:
    return "—" if g is None else ("on" if g else "off")


def markdown(rep: dict) -> str:
    m = rep.get("machine") or {}
    gpu = m.get("gpu") or {}
    smi = m.get("nvidia_smi")
    smi0 = smi[0] if isinstance(smi, list) and smi else {}
    cfg = rep.get("config") or {}
    full, dflt = cfg.get("full_iters", 1000), cfg.get("default_iters", 100)
    L = [f"# gcomp GPU check — {gpu.get('name') or ('dry run on CPU' if rep.get('dry') else rep.get('device'))}", ""]
    if rep.get("dry"):
        L += ["**Dry run: CPU numbers from a tiny model (32×32, gf = df = 8). They test the script, not a GPU.**", ""]
    L += [f"Started {rep.get('started')}, {rep.get('wall_s')} s in all; commit {rep.get('commit') or 'unknown'}.", "",
          "## Machine", "",
          f"- GPU: {gpu.get('name', '—')} (compute capability {gpu.get('capability', '—')}, "
          f"{gpu.get('memory_gib', '—')} GiB, {gpu.get('sms', '—')} SMs); driver {smi0.get('driver_version', '—')}, "
          f"max SM clock {smi0.get('clocks.max.sm', '—')}, power limit {smi0.get('power.limit', '—')}",
          f"- torch {m.get('torch', '—')}, CUDA {m.get('torch_cuda', '—')}, cuDNN {m.get('cudnn', '—')}; "
          f"Python {m.get('python', '—')}",
          f"- CPU: {m.get('cpu', '—')} ({m.get('cores', '—')} cores)",
          f"- libraries: {', '.join(f'{k} {v}' for k, v in (m.get('libraries') or {}).items() if v)}"]
    roof = rep.get("roofline") or {}
    tf = roof.get("tflops") or {}
    if tf:
        L += [f"- measured dense matmul ({roof.get('method', '')}): "
              + ", ".join(f"{k} {v:.4g} TFLOP/s" for k, v in tf.items())
              + f"; {roof.get('flops_per_image_iteration', 0) / 1e9:.3f} GFLOP per image-iteration → bf16 roofline "
              f"{_f(roof.get('bf16_roofline_images_per_s_1000'), '{:.1f}')} images/s at {full} iterations"]
    L += ["", "## Phases", "", "| phase | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name, p in (rep.get("phases") or {}).items():
        note = (p.get("error") or p.get("reason") or "").strip().splitlines()
        L.append(f"| {name} | {p.get('status')} | {_f(p.get('seconds'), '{:.1f}')} | "
                 f"{(note[-1] if note else '').replace('|', '/')[:160]} |")
    pt = rep.get("pytest")
    if pt:
        L += ["", "## pytest -m gpu", "",
              f"`{pt.get('command')}`: exit {pt.get('exit_code')}, {pt.get('passed')} passed, {pt.get('failed')} "
              f"failed, {pt.get('errors')} errors, {pt.get('skipped')} skipped ({pt.get('unexpected_skips')} for a "
              f"reason other than a missing package), {pt.get('deselected')} deselected, {pt.get('seconds')} s → "
              f"**{'OK' if pt.get('ok') else 'NOT OK'}**. Log: `{pt.get('log')}`."]
        for s in pt.get("skips", []):
            L.append(f"- skipped{'' if s['allowed'] else ' (**not allowed**)'}: `{s['test']}`: {s['reason'][:200]}")
        for f in pt.get("failures", []):
            L.append(f"- **{f['kind']}**: `{f['test']}`: {f['message'][:300]}")
    seed = rep.get("seed_loop")
    rows = rep.get("rows") or []
    if seed or rows:
        L += ["", "## Search step throughput", "",
              f"Images/s at {full} iterations (the seed's) and at {dflt} (the default model's) = batch / (seconds "
              f"per step × iterations); per-step time = (long − short search) / step difference, after a warm-up "
              f"search; the fixed cost per search (copies in, the final loss) is in its own column and in "
              f"\"@ {full} incl. fixed\". × seed: against the seed loop's images/s in this run. Roofline share: "
              f"achieved FLOP/s ({roof.get('flops_per_image_iteration', 0) / 1e9:.3f} GFLOP per image-iteration) "
              f"over the measured bf16 matmul peak.", "",
              f"| path | precision | CUDA graph | batch | ms / step | fixed ms / search | images/s @ {full} | "
              f"@ {dflt} | @ {full} incl. fixed | × seed | TFLOP/s | bf16 roofline share | peak MiB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        L.insert(len(L) - 3, "")
        L.insert(len(L) - 3, "Torch kernel choices (engine/backends/torch_backend.py, train/adjoint.py): portable = the "
                 "ops step.onnx holds; nhwc = channels-last; pad8 = the image padded to 8 channels before the two "
                 "convolutions that read it; masks = one kernel per activation backward; tuned = all three; "
                 "compile = torch.compile. The same values up to the order of float sums, and in bf16 leaky ReLU's slope "
                 "applied in fp32 (tests/test_fast_paths.py).")
        L.insert(len(L) - 3, "")
        for r in ([seed] if seed else []) + rows:
            if r.get("status") != "ok":
                L.append(f"| {r['name']} | {r.get('precision') or '—'} | {_graph(r.get('cuda_graph'))} | "
                         f"{r.get('batch') or '—'} | {r.get('status')}: "
                         f"{(r.get('reason') or r.get('error') or '').replace('|', '/')[:200]} |||||||||")
                continue
            L.append(f"| {r['name']} | {r['precision']} | {_graph(r.get('cuda_graph'))} | {r['batch']} | "
                     f"{_f(r['step_ms'], '{:.3f}')} | {_f(r.get('search_overhead_ms'), '{:.1f}')} | "
                     f"{_f(r['images_per_s_1000'])} | {_f(r['images_per_s_default'])} | "
                     f"{_f(r.get('images_per_s_1000_with_overhead'))} | {_f(r.get('ratio_vs_seed_loop'), '{:.1f}×')} | "
                     f"{_f(r.get('achieved_tflops'), '{:.1f}')} | {_f(r.get('share_of_bf16_roofline'), '{:.1%}')} | "
                     f"{_f(r.get('peak_memory_mib'), '{:.0f}')} |")
    ort = rep.get("onnxruntime_cuda")
    inst = rep.get("onnxruntime_gpu_install") or {}
    if ort is not None:
        L += ["", "## ONNX Runtime CUDA", "",
              ("available: " + ", ".join(ort.get("providers", []))) if ort.get("available") else
              f"**not measured**: {ort.get('reason')}. Wheel: {inst.get('reason') or inst.get('wheels')}."]
    for p in rep.get("profiles") or ([rep["profile"]] if rep.get("profile") else []):
        if p.get("error"):
            L += ["", f"## Profile: bf16 fast path, kernels {p.get('kernels')}", "", f"failed: {p['error']}"]
            continue
        L += ["", f"## Profile: bf16 fast path, kernels {p.get('kernels', 'portable')}, batch {p.get('batch')} "
              f"({p.get('time_basis')})", "",
              f"{p.get('reading')}.", "",
              f"Kernel time {_f(p.get('kernel_ms_per_step'), '{:.3f}')} ms per step (eager, profiled); "
              f"CUDA-graph step {_f(p.get('graph_step_ms'), '{:.3f}')} ms, "
              f"eager step {_f(p.get('eager_step_ms'), '{:.3f}')} ms; "
              f"all kernels {_f(p.get('all_kernels_tflops'), '{:.1f}')} TFLOP/s. Full table: `{p.get('file')}`.", "",
              "| group | ms / step | share |", "| --- | --- | --- |"]
        for g, x in (p.get("groups") or {}).items():
            L.append(f"| {g} | {x['ms_per_step']:.3f} | {x['share']:.1%} |")
        L += ["", "| top kernels | group | ms / step | share | calls / step |", "| --- | --- | --- | --- | --- |"]
        for k in (p.get("top") or [])[:12]:
            L.append(f"| `{k['name'][:90]}` | {k['group']} | {k['ms_per_step']:.3f} | {k['share']:.1%} | "
                     f"{k['calls_per_step']:.0f} |")
    e = rep.get("e2e")
    if e:
        L += ["", "## End to end: `gcomp complete`", "",
              f"{e['images']} synthetic {e['image_size']}×{e['image_size']} PNG faces "
              f"(generated in {e['generate_s']} s); "
              f"images/s = images / the job's seconds (listing, decode, search, composite, write; from "
              f"gcomp-summary.json); wall = the whole command including Python start and model load.", "",
              "| batch | I/O threads | iterations | status | done | failed | images/s | search s | job s | wall s | "
              "images/s (wall) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in e["runs"]:
            L.append(f"| {r['batch']} | {r.get('io_threads', 4)} | {r['iters']} | {r.get('status')} | {_f(r.get('done'), '{}')} | "
                     f"{_f(r.get('failed'), '{}')} | {_f(r.get('images_per_s'), '{:.1f}')} | "
                     f"{_f(r.get('search_seconds'), '{:.1f}')} | {_f(r.get('seconds'), '{:.1f}')} | "
                     f"{_f(r.get('wall_s'), '{:.1f}')} | {_f(r.get('images_per_s_wall'), '{:.1f}')} |")
        if e["runs"]:
            L.append(f"\nCommand: `{e['runs'][0]['command']}`")
    v = rep.get("verdict") or {}
    L += ["", "## Verdict", ""]
    b = v.get("best_bf16_cuda_graph")
    if b:
        L.append(f"- best torch bf16 CUDA-graph: **{b['images_per_s_1000']:.1f} images/s at {full} iterations** "
                 f"(batch {b['batch']}, kernels {b.get('kernels', 'portable')}), "
                 f"{_f(b.get('ratio_vs_seed_loop'), '{:.1f}')}× the seed loop, "
                 f"{_f(b.get('share_of_bf16_roofline'), '{:.1%}')} of the bf16 roofline")
    L.append(f"- pytest -m gpu: {'all pass' if v.get('pytest_all_pass') else 'NOT all pass'}")
    if rep.get("dry"):
        L.append("- dry run on CPU: not a GPU proof")
    else:
        L.append(f"- issue 17's bar (every GPU test passing, ≥ 300 images/s and ≥ 50× the seed loop): "
                 f"**{'met' if v.get('done_when_met') else 'not met'}**")
    return "\n".join(L) + "\n"
