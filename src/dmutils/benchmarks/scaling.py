"""``dmutils bench scaling``: segmenter mIoU on the real test split against the number of synthetic images (nested
subsets of one set made once), of real images, and of real images plus the synthetic set, over seeds with 95%
bands; how many synthetic images equal N real ones, and whether real + synthetic beats real alone
(:mod:`dmutils.studies.scaling`). ``--ray N`` generates the set on N local Ray actors. Everything is kept under
``--cache`` (default data/bench-scaling): the set, and one JSON a training, so a stopped run resumes.
"""
from __future__ import annotations

import argparse

from dmutils.benchmarks import study_options as opt


def run(args: argparse.Namespace) -> dict:
    from dmutils.studies import scaling as sc
    from dmutils.studies.trainings import override, records

    quick = getattr(args, "quick", False)
    params = opt.study_params(args)
    settings = sc.ScalingSettings(seeds=opt.seeds(args))
    if quick:
        settings = sc.ScalingSettings(synthetic_sizes=(4, 8), real_sizes=(4, 8), seeds=settings.seeds, n_test=8,
                                      image_size=32, oversample=1.5)
        params = override(params, {"model": {"num_inference_steps": 4}, "dataset": {"workers": 0}})
    opt.apply(settings, args, synthetic_sizes="synthetic_sizes", real_sizes="real_sizes", n_test="test_images", arms="arms")
    ray = None
    if getattr(args, "ray", None):
        ray = "local"
        params = override(params, {"ray": {"actors": args.ray}}, "--ray")
    with opt.CacheFolder(args, "scaling") as cache:
        study = sc.run_scaling(params, settings, cache, ray=ray, progress=not getattr(args, "json", False))
    curve = sc.curves(study)
    return {"curves": records(curve), "synthetic_equivalent": records(sc.synthetic_equivalent(curve)),
            "mixing_gain": records(sc.mixing_gain(study)), "seeds": list(settings.seeds),
            "synthetic_sizes": list(settings.synthetic_sizes), "real_sizes": list(settings.real_sizes), "arms": list(settings.arms),
            "mix_synthetic": settings.mix, "steps": params.train.steps, "batch_size": params.train.batch_size,
            "trainings": len(study.runs), "trainings_cached": int(study.runs.cached.sum()),
            "train_seconds_total": round(float(study.runs.train_seconds.sum()), 1), "runs": records(study.runs),
            "_inputs": {"params": params, "model_dir": params.resolve_path(params.model.path)}}
