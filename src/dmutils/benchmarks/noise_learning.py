"""``dmutils bench noise-learning``: does DiffuMask's noise learning recover a clean segmenter, and does it find the
corrupted masks? (:mod:`dmutils.studies.noise_study`: a known share of the toy world's exact training labels
corrupted, shifted / swapped / eroded; trained with and without noise learning over seeds; mIoU on the real test
split with intervals paired against the clean and the no-noise-learning trainings; detection precision, recall, AUC.)

Every training is cached under ``--cache`` (default data/bench-noise-learning), so a stopped run resumes.
"""
from __future__ import annotations

import argparse

from dmutils.benchmarks import study_options as opt


def run(args: argparse.Namespace) -> dict:
    from dmutils.studies import noise_study as ns
    from dmutils.studies.trainings import records

    quick = getattr(args, "quick", False)
    params = opt.study_params(args)
    settings = ns.NoiseSettings(seeds=opt.seeds(args))
    if quick:
        settings = ns.NoiseSettings(shares=(0.25,), seeds=settings.seeds, n_train=16, n_test=8, image_size=32)
    opt.apply(settings, args, shares="shares", kinds="kinds", n_test="test_images")
    with opt.CacheFolder(args, "noise-learning") as cache:
        study = ns.run_noise_study(params, settings, cache, progress=False)
    table = ns.noise_table(study)
    runs = study.runs
    return {"answers": ns.answers(table), "clean_miou": float(table.loc[table.arm == "clean", "miou"].iloc[0]),
            "trainings": len(runs), "trainings_cached": int(runs.cached.sum()),
            "train_seconds_total": round(float(runs.train_seconds.sum()), 1),
            "settings": ns.settings_dict(settings), "steps": params.train.steps, "batch_size": params.train.batch_size,
            "noise_learning": params.train.noise_learning.model_dump(mode="json"),
            "table": records(table), "runs": records(runs), "_inputs": {"params": params}}
