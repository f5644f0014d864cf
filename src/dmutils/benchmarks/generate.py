"""``dmutils bench generate``: end-to-end dataset throughput (capture + masks + DenseCRF + files)
divided by plain generation throughput, same model, params, batch size and steps. Target >= 0.9.

Params: ``params/toy.yaml`` (the embedded default: the toy model, tau 0, DenseCRF on) with
``dataset.workers=1``; ``throughput_ratio_tau1`` repeats the measure with ``masks.tau=1`` (Dataset
Diffusion's self-attention refinement, so self-attention is captured too). Plain generation is the
same ``pipe(...)`` call without capture, masks or files. After a warm-up of both, plain and dataset
runs alternate ``repeats`` times and the medians are compared. A dataset run is a whole
:func:`generate_dataset` call into a fresh folder, worker start-up and the last batch's commit
included: the throughput a user sees, for a run of ``samples`` samples (start-up is ~3 s of one
core, so shorter runs pay more for it).

``--ray N`` measures Ray generation instead (:func:`run_ray`): ``ray_parallel_efficiency`` = throughput of
N single-thread actors / (N x throughput of one single-thread process), same params, and ``ray_identical``:
whether the two datasets' files are byte for byte the same.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from dmutils.params import REPO_ROOT, load_params


def _median_times(pipe, params, batches: int, repeats: int) -> tuple[float, float]:
    """Median seconds of plain generation and of ``generate_dataset`` over ``batches`` batches."""
    import torch

    from dmutils.dataset.generate import generate_dataset
    from dmutils.dataset.prompts import PromptPlan

    m, batch = params.model, params.dataset.batch_size
    specs = PromptPlan(params).specs(range(batch * batches))

    def plain(n_batches: int) -> float:
        t0 = time.perf_counter()
        for k in range(n_batches):
            chunk = specs[k * batch:(k + 1) * batch]
            with torch.no_grad():
                pipe([s.prompt for s in chunk], num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale,
                     height=m.height, width=m.width, output_type="np",
                     generator=[torch.Generator("cpu").manual_seed(s.seed) for s in chunk])
        return time.perf_counter() - t0

    def dataset(n_samples: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            p = params.model_copy(update={"dataset": params.dataset.model_copy(update={"out_dir": f"{tmp}/ds", "num_samples": n_samples})})
            t0 = time.perf_counter()
            generate_dataset(p, pipe=pipe, progress=False)
            return time.perf_counter() - t0

    plain(1), dataset(batch)  # warm-up: kernels for this batch shape, file-system caches
    plains, datasets = [], []
    for _ in range(repeats):
        plains.append(plain(batches))
        datasets.append(dataset(batch * batches))
    return statistics.median(plains), statistics.median(datasets)


def _files(root) -> dict[str, bytes]:
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "dataset.json"}


def run_ray(args: argparse.Namespace, params) -> dict:
    """One single-thread process (everything inline, model loaded beforehand) against ``args.ray``
    single-thread actors on a local Ray cluster of as many CPUs, on the same samples.

    Throughputs count generation time only: the single process from its first to its last sample, the
    actors from the first batch any of them starts to the last sample finished (``busy_span_s``), so
    Ray's and the actors' start-up (imports, model load: the same once-per-worker cost at any scale) is
    left out; ``ray_wall_s`` includes it, and ``ray_parallel_efficiency_with_startup`` uses it."""
    import ray
    import torch

    from dmutils.dataset.generate import generate_dataset
    from dmutils.dataset.ray_generate import init_ray
    from dmutils.pipeline import load_pipeline

    n = int(args.ray)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        p = params.model_copy(update={"dataset": params.dataset.model_copy(update={"out_dir": f"{tmp}/single", "workers": 0}),
                                      "ray": params.ray.model_copy(update={"actors": n, "threads": 1})})
        pipe = load_pipeline(p.model)
        single = generate_dataset(p, pipe=pipe, progress=False)
        del pipe
        init_ray(num_cpus=n, num_gpus=0)
        try:
            t0 = time.perf_counter()
            par = generate_dataset(p.model_copy(update={"dataset": p.dataset.model_copy(update={"out_dir": f"{tmp}/ray"})}),
                                   progress=False, ray="local")
            wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
        identical = _files(f"{tmp}/single") == _files(f"{tmp}/ray")
    samples = p.dataset.num_samples
    one = samples / single["seconds"]
    many = samples / par["ray"]["busy_span_s"]
    return {"actors": n, "threads_per_actor": 1, "samples": samples, "batch_size": p.dataset.batch_size,
            "steps": p.model.num_inference_steps, "masks": f"tau {p.masks.tau}, crf {p.masks.crf.enabled}",
            "single_samples_per_s": round(one, 4), "ray_samples_per_s": round(many, 4), "ray_wall_s": round(wall, 2),
            "ray_parallel_efficiency": round(many / (n * one), 4),
            "ray_parallel_efficiency_with_startup": round(samples / wall / (n * one), 4), "ray_identical": identical}


def run(args: argparse.Namespace) -> dict:
    import torch

    from dmutils.pipeline import load_pipeline

    quick = bool(getattr(args, "quick", False))
    batch, batches, repeats = (4, 2, 1) if quick else (8, 8, 2)
    over = {"model": {"num_inference_steps": 4 if quick else 25, "device": "cuda" if torch.cuda.is_available() else "cpu"},
            "dataset": {"batch_size": batch, "workers": 1, "min_area": 0.0}}
    toy = REPO_ROOT / "models" / "toy-sd"
    if not (toy / "model_index.json").is_file():
        raise SystemExit(f"bench generate needs the embedded toy model at {toy} (git checkout models/toy-sd, or "
                         "'dmutils train-toy-model' to make it)")
    params = load_params(REPO_ROOT / "params" / "toy.yaml", overrides=over)
    if getattr(args, "ray", None):
        ray_over = {"model": {**over["model"], "device": "cpu"},  # single-thread CPU actors, by definition
                    "dataset": {**over["dataset"], "num_samples": batch * (2 if quick else 4) * int(args.ray)}}
        return run_ray(args, load_params(REPO_ROOT / "params" / "toy.yaml", overrides=ray_over))
    pipe = load_pipeline(params.model)
    out = {"model": "models/toy-sd", "params": "params/toy.yaml", "batch_size": batch, "samples": batch * batches,
           "steps": params.model.num_inference_steps, "workers": params.dataset.workers, "repeats": repeats,
           "threads": torch.get_num_threads(), "masks": f"tau {params.masks.tau}, crf {params.masks.crf.enabled}"}
    plain_s, dataset_s = _median_times(pipe, params, batches, repeats)
    out |= {"plain_samples_per_s": round(batch * batches / plain_s, 4), "dataset_samples_per_s": round(batch * batches / dataset_s, 4),
            "throughput_ratio": round(plain_s / dataset_s, 4)}
    tau1 = params.model_copy(update={"masks": params.masks.model_copy(update={"tau": 1, "refine": "self_attention"})})
    plain_s, dataset_s = _median_times(pipe, tau1, batches, repeats)
    out["throughput_ratio_tau1"] = round(plain_s / dataset_s, 4)
    return out
