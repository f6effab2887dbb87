"""`gcomp eval`: PSNR / SSIM / hole L1 per mask kind, with OpenCV's inpainting beside."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .errors import fail, output_file, writing


def evaluate(
    data: Path = typer.Argument(..., metavar="DATA", help="A folder or a tar of images (e.g. ../shared/data/celeba64/val.tar)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", show_default="the bundled model", help="A checkpoint, an export folder, or a bundled model by name: default, small."),
    mask: str = typer.Option("center,random,half,pattern", "--mask", help="Comma-separated mask kinds (half = left)."),
    iters: Optional[int] = typer.Option(None, "--iters", show_default="the model's, else the seed's", help="Search iterations per image."),
    limit: int = typer.Option(100, "--limit", help="Images per mask kind (the first N)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images searched together."),
    lr: Optional[float] = typer.Option(None, "--lr", show_default="the model's, else the seed's", help="Step size."),
    lam: Optional[float] = typer.Option(None, "--lam", show_default="the model's, else the seed's", help="Weight of the perceptual (discriminator) loss."),
    optimizer: str = typer.Option("momentum", "--optimizer", help="momentum (the seed's projected Nesterov) or adam."),
    weighted: bool = typer.Option(False, "--weighted/--plain", help="The paper's 7x7-weighted context loss."),
    restarts: int = typer.Option(1, "--restarts", help="Latents per image (the encoder's first, then random); the lowest final loss wins."),
    init: str = typer.Option("auto", "--init", help="auto (the model's encoder if it has one), encoder, random."),
    early_stop: Optional[int] = typer.Option(None, "--early-stop", show_default="the model's, else 0 (never)", help="Patience in steps; 0: never stop early."),
    backend: str = typer.Option("auto", "--backend", help="As gcomp complete's: auto, torch, onnxruntime, openvino, tensorrt."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    precision: Optional[str] = typer.Option(None, "--precision", help="As gcomp complete's (openvino: auto, fp32, bf16)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime / openvino: CPU threads."),
    streams: Optional[int] = typer.Option(None, "--streams", help="onnxruntime / openvino: concurrent requests."),
    seed: int = typer.Option(0, "--seed", help="Seeds the hole noise, the latents and random masks (per image, by name)."),
    blend: Optional[str] = typer.Option(None, "--blend", show_default="auto", help="As gcomp complete's: auto, none, poisson, poisson:A."),
    out: Optional[Path] = typer.Option(None, "--out", help="Keep what was scored: OUT/KIND/input/ (the noisy-hole inputs) and "
                                       "OUT/KIND/output/ (the files gcomp complete wrote).", show_default="a temporary folder"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the scores here."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Picture grid PNG, per mask kind: noisy input | gcomp | "
                                        "Telea | NS | original."),
):
    """Complete held-out images under each mask and score them beside cv2.inpaint (Telea, Navier-Stokes).

    Each image's hole is filled with noise first, completed by the same code path as `gcomp complete`, and
    the written files are scored against the originals."""
    from rich.console import Console
    from rich.table import Table

    from ..engine import images
    from ..engine.api import open_model
    from ..engine.evaluate import PAPER_PSNR, check_args, evaluate as run, picture_grid
    from ..engine.options import CompleteOptions
    from ..engine.search import SearchParams
    from .errors import runtime_errors

    kinds = [k.strip() for k in mask.split(",") if k.strip()]
    output_file(json_path, "--json")  # before minutes of completing and scoring
    output_file(grid, "--grid", images.SUFFIXES)
    try:
        check_args(data, kinds, limit)  # before the model loads
        opts = CompleteOptions(batch_size=batch_size, restarts=restarts, seed=seed, init=init,
                               **({"blend": blend} if blend is not None else {}),
                               search=SearchParams(iters=iters, lr=lr, lam=lam, optimizer=optimizer, patience=early_stop,
                                                   weighted=weighted))
        with open_model(model, backend=backend, device=device, precision=precision, threads=threads,
                        streams=streams) as m:
            for note in m.notes:
                typer.echo(f"note: {note}", err=True)
            results, pictures = run(m, data, kinds, opts, limit, log=lambda msg: typer.echo(msg, err=True),
                                    work_dir=out)
            backend_settings, model, opts = m.backend.settings(), m.source, m.options(opts)
    except (*runtime_errors(), OSError) as e:
        raise fail(str(e)) from None
    skipped = f", {results[0].skipped} unreadable skipped" if results[0].skipped else ""
    t = Table(title=f"gcomp eval on {data} ({results[0].n} images{skipped}, {results[0].search['iters']} iterations)")
    for c in ("mask", "method", "PSNR dB", "PSNR hole dB", "SSIM", "L1 hole"):
        t.add_column(c, justify="left" if c in ("mask", "method") else "right")
    for r in results:
        for name, label in (("gcomp", "gcomp"), ("telea", "cv2.inpaint Telea"), ("ns", "cv2.inpaint NS"),
                            ("harmonic", "harmonic fill (no GAN)")):
            s = r.scores[name]
            t.add_row(r.mask, label, f"{s['psnr']:.2f}", f"{s['psnr_hole']:.2f}", f"{s['ssim']:.3f}", f"{s['l1_hole']:.4f}")
        if r.mask in PAPER_PSNR:
            ce, yeh = PAPER_PSNR[r.mask]
            t.add_row(r.mask, "paper: Context Encoder / Yeh et al.", f"{ce} / {yeh}", "", "", "", end_section=True)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(t)
    if json_path:
        report = {"data": str(data), "model": str(model), "backend": backend_settings, "iters": results[0].search["iters"], "results": [r.__dict__ for r in results],
                  "paper_psnr": PAPER_PSNR, "search": opts.search.as_dict()}
        with writing(json_path, "--json"):
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=2))
        typer.echo(f"wrote {json_path}")
    if grid:
        with writing(grid, "--grid"):
            images.write_rgb(grid, picture_grid(pictures))
        typer.echo(f"wrote {grid}")
