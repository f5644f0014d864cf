"""``dmutils bench generate``: end-to-end dataset throughput (capture + masks + DenseCRF + files)
divided by plain generation throughput, same model, batch size and steps. Target >= 0.9.

Model: ``models/toy-sd`` when it exists, else the tiny random SD 1.5-shaped pipeline (the result's
``model`` says which). Both sides run after one warm-up batch; the dataset side includes worker
start-up and the commit of the last batch, so it is the throughput a user sees.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from dmutils.params import REPO_ROOT, load_params


def run(args: argparse.Namespace) -> dict:
    import torch

    from dmutils.dataset.generate import generate_dataset
    from dmutils.dataset.prompts import PromptPlan

    quick = bool(getattr(args, "quick", False))
    toy = REPO_ROOT / "models" / "toy-sd"
    batch, batches = (4, 2) if quick else (8, 4)
    over = {"model": {"num_inference_steps": 4 if quick else 25, "device": "cpu" if not torch.cuda.is_available() else "auto"},
            "masks": {"crf": {"enabled": True}},
            "dataset": {"num_samples": batch * batches, "batch_size": batch, "workers": 1, "min_area": 0.0}}
    if toy.is_file() or (toy / "model_index.json").is_file():
        from dmutils.pipeline import load_pipeline

        model = "models/toy-sd"
        over["model"]["path"] = str(toy)
        params = load_params(overrides=over)
        pipe = load_pipeline(params.model)
    else:
        from dmutils.tiny_models import tiny_sd15_pipeline

        model = "tiny random SD1.5-shaped (models/toy-sd absent)"
        over["capture"] = {"cross_resolutions": [16, 8], "self_resolutions": [16]}
        params = load_params(overrides=over)
        pipe = tiny_sd15_pipeline()
    m = params.model
    specs = PromptPlan(params).specs(range(batch * batches))

    def plain(chunk):
        with torch.no_grad():
            pipe([s.prompt for s in chunk], num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale,
                 height=m.height, width=m.width, output_type="np",
                 generator=[torch.Generator("cpu").manual_seed(s.seed) for s in chunk])

    plain(specs[:batch])  # warm-up
    t0 = time.perf_counter()
    for k in range(batches):
        plain(specs[k * batch:(k + 1) * batch])
    plain_rate = batch * batches / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        params.dataset.out_dir = f"{tmp}/ds"
        t0 = time.perf_counter()
        summary = generate_dataset(params, pipe=pipe, progress=False)
        e2e_rate = batch * batches / (time.perf_counter() - t0)
    return {"model": model, "batch_size": batch, "samples": batch * batches, "steps": m.num_inference_steps,
            "workers": params.dataset.workers, "plain_samples_per_s": round(plain_rate, 4),
            "dataset_samples_per_s": round(e2e_rate, 4), "throughput_ratio": round(e2e_rate / plain_rate, 4),
            "written": summary["written"], "rejected": summary["rejected"]}
