"""`gcomp complete`: fill the masked region of an image or of every image in a folder tree."""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Optional

import typer


def _shard(value: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in value.split("/"))
        return k, n
    except ValueError:
        raise typer.BadParameter(f"expected K/N, e.g. 0/4, got {value!r}", param_hint="--shard") from None


@contextlib.contextmanager
def _interrupted():
    """Ctrl-C, or SIGTERM (what `kill`, `timeout`, docker stop and Kubernetes send): the job stops as on Ctrl-C
    (finished outputs whole, the summary written), one line says how far it got and that a rerun resumes, and the
    exit status is 128 + the signal (130, 143; Typer alone exits 130 silently)."""
    caught = {"signal": signal.SIGINT}

    def on_term(signum, frame):
        caught["signal"] = signum
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()  # a handler can only be set from there
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        yield
    except KeyboardInterrupt as e:
        # run_files raises Interrupted (its message has the counts); Ctrl-C elsewhere (loading, --ray) has none
        typer.echo(str(e) if str(e) else "interrupted; run the same command again to resume (finished images are "
                   "skipped)", err=True)
        raise typer.Exit(128 + caught["signal"]) from None
    finally:
        if main:  # (None: a handler set outside Python; the default then)
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def complete(
    # str, not Path: Path("") is ".", and an empty argument (an unset shell variable) must be refused, not the cwd
    input: str = typer.Argument(..., metavar="INPUT", help="An image, or a folder (searched recursively)."),
    output: str = typer.Argument(..., metavar="OUTPUT", help="Output folder (mirrors the input tree), or an image path for one input image."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", show_default="the bundled 64x64 face model (ONNX Runtime on CPU)",
                                         help="A checkpoint (.pt or run folder), an export folder, or a bundled model "
                                         "by name: default, small (4x cheaper, lower quality)."),
    mask: str = typer.Option("center", "--mask", help="A kind: center[:scale], random[:fraction], left, right, top, bottom, "
                             "grid[:step], lowres[:step], pattern[:fraction], strokes[:count]; or a mask file / folder (white = fill). See Masks."),
    iters: Optional[int] = typer.Option(None, "--iters", show_default="the model's, else the seed's 1000", help="Search iterations per image."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images searched together."),
    restarts: int = typer.Option(1, "--restarts", help="Latents per image (the encoder's first, then random); the lowest final loss wins."),
    init: str = typer.Option("auto", "--init", help="Starting latent: auto (the model's encoder.onnx if it has one, else random), encoder, random."),
    early_stop: Optional[int] = typer.Option(None, "--early-stop", show_default="the model's, else 0 (never)", help="Stop an image after N steps without improvement; 0: never."),
    blend: Optional[str] = typer.Option(None, "--blend", show_default="auto", help="auto (what the model recommends for the mask kind, measured on val.tar; else poisson:0.5), "
                                        "poisson (leak-free Poisson blending of the seam), poisson:A (G's gradients weighted by A "
                                        "in [0, 1]; 0 = the harmonic fill, no GAN) or none (exact composite of G's pixels)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the latents and random masks (per image, by name)."),
    backend: str = typer.Option("auto", "--backend", help="auto (by --model: .pt -> torch, export folder/.onnx -> onnxruntime, .engine -> tensorrt), torch, onnxruntime, openvino, tensorrt."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    optimizer: str = typer.Option("momentum", "--optimizer", help="momentum (the seed's projected Nesterov) or adam."),
    lr: Optional[float] = typer.Option(None, "--lr", show_default="the model's, else the seed's (adam: its own)", help="Step size."),
    momentum: Optional[float] = typer.Option(None, "--momentum", show_default="the model's, else the seed's", help="Momentum of the projected Nesterov step."),
    lam: Optional[float] = typer.Option(None, "--lam", show_default="the model's, else the seed's", help="Weight of the perceptual (discriminator) loss."),
    weighted: bool = typer.Option(False, "--weighted/--plain", help="The paper's 7x7-weighted context loss."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images whose output exists (without it they are skipped)."),
    shard: Optional[str] = typer.Option(None, "--shard", show_default="all of it", help="K/N: complete only the K-th of N parts of the input."),
    save_progress: bool = typer.Option(False, "--save-progress", help="Write snapshot grids every 50 iterations of the search and where an early stop ends it (OUTPUT/_gcomp_progress/batch_N/iter_K.png; none with 0 iterations)."),
    face: str = typer.Option("auto", "--face", help="auto: photos larger than the model are cropped around the face "
                             "OpenCV finds (mask kinds apply to that crop; no face: the whole image); off: never."),
    threads: Optional[int] = typer.Option(None, "--threads", show_default="all cores", help="onnxruntime / openvino: CPU threads."),
    precision: Optional[str] = typer.Option(None, "--precision", show_default="openvino: auto, torch: fp32", help="openvino: auto (bf16 where the CPU has native bf16), fp32 or bf16; "
                                            "torch: fp32, tf32 (CUDA) or bf16 (the fast path; see the README)."),
    cuda_graph: Optional[bool] = typer.Option(None, "--cuda-graph/--no-cuda-graph", show_default="on", help="torch, onnxruntime, tensorrt on CUDA: "
                                              "replay the search step as a captured CUDA graph."),
    streams: Optional[int] = typer.Option(None, "--streams", show_default="1", help="onnxruntime / openvino on CPU: split each batch across N concurrent requests."),
    allow_unvalidated: bool = typer.Option(False, "--allow-unvalidated", help="Run an export whose validation against "
                                           "PyTorch failed (validation.json ok: false), with a warning (without it such an export is refused)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ray: Optional[str] = typer.Option(None, "--ray", show_default="off", help="Run on Ray Data: auto (the cluster this machine is in, else a "
                                      "local instance) or an address (host:6379, ray://host:10001). Needs pip install 'gcomp[ray]'."),
    io_threads: Optional[int] = typer.Option(None, "--io-threads", show_default="4", help="Threads decoding inputs and "
                                             "writing outputs beside the search (more on a many-core GPU host)."),
    workers: int = typer.Option(2, "--workers", help="--ray: completion actors, each with its own backend session."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", show_default="1 with --device cuda, else 0",
                                                    help="--ray: GPUs per actor (0.5 puts two on a GPU)."),
):
    """Complete the masked region of each image with the GAN whose latent best explains the rest."""
    from ..engine.api import open_model
    from ..engine.jobs import check_job
    from ..engine.options import CompleteOptions
    from ..engine.ray_driver import complete_ray
    from ..engine.search import SearchParams
    from .errors import fail, runtime_errors, user_errors

    if io_threads is not None and io_threads < 1:
        raise fail(f"--io-threads must be >= 1, got {io_threads}")
    with user_errors(*runtime_errors()), _interrupted():
        opts = CompleteOptions(
            mask=mask, batch_size=batch_size, restarts=restarts, seed=seed, overwrite=overwrite,
            **({"blend": blend} if blend is not None else {}),
            save_progress=save_progress, face=face, init=init, shard=_shard(shard) if shard else (0, 1),
            **({"io_threads": io_threads} if io_threads is not None else {}),
            search=SearchParams(iters=iters, lr=lr, momentum=momentum, lam=lam, optimizer=optimizer, weighted=weighted,
                                patience=early_stop),
        )
        backend_options = {"threads": threads, "precision": precision, "streams": streams, "cuda_graph": cuda_graph,
                           "allow_unvalidated": allow_unvalidated or None}
        if ray is None:
            check_job(input, output, opts)  # a bad input, mask or output fails before the model loads
            with open_model(model, backend=backend, device=device, **backend_options) as m:
                summary = m.complete_files(input, output, opts, progress=progress)
        else:
            summary = complete_ray(input, output, model, address=ray, workers=workers, gpus_per_worker=gpus_per_worker,
                                   backend=backend, device=device, options=opts, progress=progress,
                                   backend_options={k: v for k, v in backend_options.items() if v is not None})
    typer.echo(f"done {summary.done}, skipped {summary.skipped}, failed {len(summary.failed)} "
               f"in {summary.seconds:.1f} s ({summary.images_per_s:.2f} images/s)"
               + (f"; summary: {summary.summary_path}" if summary.summary_path else ""))
    if summary.failed:
        raise typer.Exit(1)
