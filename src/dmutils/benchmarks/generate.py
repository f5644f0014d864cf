"""``dmutils bench generate``: end-to-end dataset throughput (capture + masks + DenseCRF + files)
divided by plain generation throughput, same model, params, batch size and steps. Target >= 0.9.

Params: ``params/toy.yaml`` (the embedded default: the toy model, tau 0, DenseCRF on) with
``dataset.workers=1``; ``throughput_ratio_tau1`` repeats the measure with ``masks.tau=1`` (Dataset
Diffusion's self-attention refinement, so self-attention is captured too). Plain generation is the
same ``pipe(...)`` call without capture, masks or files. A dataset run is a whole
:func:`generate_dataset` call into a fresh folder, worker start-up and the last batch's commit
included: the throughput a user sees for a run of ``samples`` samples.

Timing (:mod:`dmutils.benchmarks.timing`): generation on ``DMUTILS_BENCH_THREADS`` torch threads
(default 1: on a shared machine two threads wait on each other); after a one-batch warm-up and the
worker fork server's start-up, dataset and plain runs are interleaved in pairs (wall clock: the worker
runs in parallel); ``throughput_ratio`` is the median of the per-pair t_plain / t_dataset, with
``_spread`` (max - min), ``_range`` and ``_repeats``. The fork server's start-up (torch imported
once, ~3 s of one core) is paid by the first ``generate_dataset`` of a process, not by these runs.

Which case each figure stands for. ``throughput_ratio``: this machine as it is, one generation
thread and one worker on 2 cores shared with other jobs. From the parts, measured apart in CPU
seconds of this process (``parts_*``: plain generation, generation with capture, post-processing of
the same samples on one thread), which other jobs' load moves less than wall time:

- ``throughput_ratio_shared_est`` = plain / (capture generation + post-processing): **the CPU case**,
  post-processing taking its CPU time from generation on the same cores;
- ``throughput_ratio_parallel_est`` = plain / max(capture generation, post-processing): post-processing
  on a core of its own while generation runs elsewhere, **as beside a GPU**, at this machine's generation
  speed (a GPU that generates much faster than this CPU is bound by post-processing instead:
  ``parts_postprocess_ms_per_sample`` per worker, so ``dataset.workers`` sets the ceiling).

``--ray N`` measures Ray generation instead (:func:`run_ray`): ``ray_parallel_efficiency`` = throughput of
N single-thread actors / (N x throughput of one single-thread process), same params, and ``ray_identical``:
whether the two datasets' files are byte for byte the same.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from dmutils.benchmarks.timing import fixed_threads, paired_ratio, ratio_entries
from dmutils.config import load_params
from dmutils.paths import REPO_ROOT


class _Runs:
    """The timed paths over the first ``batches`` batches of ``params``' prompt plan."""

    def __init__(self, pipe, params, batches: int):
        from dmutils.dataset.prompts import PromptPlan

        self.pipe, self.params, self.batch = pipe, params, params.dataset.batch_size
        self.batches = batches
        self.specs = PromptPlan(params).specs(range(self.batch * batches))

    def chunks(self, n_batches: int):
        return [self.specs[k * self.batch:(k + 1) * self.batch] for k in range(n_batches)]

    def plain(self, n_batches: int | None = None) -> None:
        """Plain generation: the same pipe call, no capture, masks or files."""
        import torch

        m = self.params.model
        for chunk in self.chunks(n_batches or self.batches):
            with torch.no_grad():
                self.pipe([s.prompt for s in chunk], num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale,
                          height=m.height, width=m.width, output_type="np",
                          generator=[torch.Generator("cpu").manual_seed(s.seed) for s in chunk])

    def dataset(self, n_samples: int | None = None) -> None:
        """A whole ``generate_dataset`` run into a fresh folder."""
        from dmutils.dataset.generate import generate_dataset

        n = n_samples or self.batch * self.batches
        with tempfile.TemporaryDirectory() as tmp:
            d = self.params.dataset.model_copy(update={"out_dir": f"{tmp}/ds", "num_samples": n})
            generate_dataset(self.params.model_copy(update={"dataset": d}), pipe=self.pipe, progress=False)

    def parts(self) -> dict:
        """CPU seconds of this process (``time.process_time``: other jobs' load moves them less than wall time) of plain
        generation, of generation with capture (no post-processing) and of the post-processing of those
        samples inline on one thread (masks, DenseCRF, JPEG/PNG/npz, files)."""
        from dmutils.dataset.batch import generate_batch
        from dmutils.dataset.labelling import finish_sample
        from dmutils.dataset.pool import one_thread

        p, ds = self.params, self.params.dataset
        t0 = time.process_time()
        self.plain()
        t1 = time.process_time()
        items = [(s, item) for chunk in self.chunks(self.batches)
                 for s, item in zip(chunk, generate_batch(self.pipe, chunk, p, self.batch))]
        t2 = time.process_time()
        class_index = {c: k + 1 for k, c in enumerate(p.class_names)}
        mask_params = p.masks.model_dump(mode="json")
        with tempfile.TemporaryDirectory() as tmp, one_thread():
            t3 = time.process_time()
            for s, item in items:
                record = {"index": s.index, "id": s.id, "classes": list(s.classes), "reason": item["reason"]}
                finish_sample({"record": record, "root": tmp, "image": item["image"], "cross": item["cross"],
                               "self_attn": item["self_attn"], "class_ids": [class_index[c] for c in s.classes],
                               "mask_params": mask_params, "min_area": ds.min_area, "save_maps": ds.save_maps})
            t4 = time.process_time()
        return {"plain_s": t1 - t0, "capture_generation_s": t2 - t1, "postprocess_s": t4 - t3}


def measure(pipe, params, batches: int, repeats: int, label: str) -> dict:
    """The paired dataset/plain throughput ratio and the parts (see the module docstring)."""
    from dmutils.dataset.pool import make_pool

    runs = _Runs(pipe, params, batches)
    runs.plain(1)  # warm-up: kernels for this batch shape
    make_pool(1).shutdown()  # the fork server's one start-up (torch imported once), not timed: see make_pool
    r = paired_ratio(runs.dataset, runs.plain, repeats=repeats, warmup=0, label=label)  # t_plain / t_dataset
    parts = runs.parts()
    n = runs.batch * batches
    gen, post = parts["capture_generation_s"], parts["postprocess_s"]
    return {"ratio": r, "plain_s": r["b_s"], "dataset_s": r["a_s"], "parts": parts, "samples": n,
            "generation_only_ratio": parts["plain_s"] / gen, "shared_est": parts["plain_s"] / (gen + post),
            "parallel_est": parts["plain_s"] / max(gen, post), "postprocess_ms_per_sample": 1000 * post / n}


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
    from dmutils.dataset.ray_backend import init_ray
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
    threads = fixed_threads()
    batch, batches, repeats = (4, 1, 1) if quick else (8, 2, 2)
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
        ray_params = load_params(REPO_ROOT / "params" / "toy.yaml", overrides=ray_over)
        return run_ray(args, ray_params) | {"_inputs": {"params": ray_params, "model_dir": toy, "device": "cpu"}}
    pipe = load_pipeline(params.model)
    pipe.set_progress_bar_config(disable=True)
    out = {"_inputs": {"params": params, "model_dir": toy, "device": params.model.device},
           "model": "models/toy-sd", "params": "params/toy.yaml", "batch_size": batch, "samples": batch * batches,
           "steps": params.model.num_inference_steps, "workers": params.dataset.workers, "threads": threads,
           "masks": f"tau {params.masks.tau}, crf {params.masks.crf.enabled}",
           "case": "throughput_ratio*: whole runs, wall clock, on this machine's cores shared by generation (threads) and the "
                   "worker (and other jobs); from CPU seconds of the parts: *_shared_est = plain / (capture generation + "
                   "post-processing), the 2-core CPU case; *_parallel_est = plain / max(both), post-processing on a core of "
                   "its own, as beside a GPU"}
    tau1 = params.model_copy(update={"masks": params.masks.model_copy(update={"tau": 1, "refine": "self_attention"})})
    for suffix, p in (("", params), ("_tau1", tau1)):
        m = measure(pipe, p, batches, repeats, label=f"generate{suffix or ' tau0'}")
        out |= ratio_entries(f"throughput_ratio{suffix}", m["ratio"])
        out |= {f"plain_samples_per_s{suffix}": round(m["samples"] / m["plain_s"], 4),
                f"dataset_samples_per_s{suffix}": round(m["samples"] / m["dataset_s"], 4),
                f"throughput_ratio{suffix}_shared_est": round(m["shared_est"], 4),
                f"throughput_ratio{suffix}_parallel_est": round(m["parallel_est"], 4),
                f"generation_only_ratio{suffix}": round(m["generation_only_ratio"], 4),
                f"parts{suffix}_plain_s": round(m["parts"]["plain_s"], 3),
                f"parts{suffix}_capture_generation_s": round(m["parts"]["capture_generation_s"], 3),
                f"parts{suffix}_postprocess_s": round(m["parts"]["postprocess_s"], 3),
                f"parts{suffix}_postprocess_ms_per_sample": round(m["postprocess_ms_per_sample"], 2)}
    return out
