"""``dmutils bench open-vocab``: DiffuMask's zero-shot setting on the toy world (:mod:`dmutils.studies.open_vocab`):
real labels for the seen classes (the unseen classes' pixels ignored), synthetic masks of the unseen ones (default
the params' last two), trained over seeds; seen / unseen / harmonic mIoU with 95% intervals over seeds and test
images. The synthetic set is generated once into ``--cache`` (default data/bench-open-vocab) and every training is
cached there.
"""
from __future__ import annotations

import argparse

from dmutils.benchmarks import study_options as opt


def run(args: argparse.Namespace) -> dict:
    from dmutils.studies import open_vocab as ov
    from dmutils.studies.trainings import override, records

    quick = getattr(args, "quick", False)
    params = opt.study_params(args)
    settings = ov.OpenVocabSettings(seeds=opt.seeds(args))
    if quick:
        settings = ov.OpenVocabSettings(seeds=settings.seeds, n_train=16, n_test=8, n_synthetic=8, image_size=32)
        params = override(params, {"model": {"num_inference_steps": 4}, "dataset": {"workers": 0}})
    opt.apply(settings, args, unseen="unseen", n_test="test_images", n_synthetic="synthetic_images")
    with opt.CacheFolder(args, "open-vocab") as cache:
        study = ov.run_open_vocab(params, settings, cache, progress=not getattr(args, "json", False))
    table = ov.open_vocab_table(study)
    at = table.set_index(["group", "arm"])
    return {"unseen": study.unseen, "seeds": list(study.seeds), "unseen_pixels_in_real_training": "255 (ignored)",
            **{f"{g}_{'real' if a == ov.ARMS[0] else 'real_synthetic'}": float(at.loc[(g, a), "miou"])
               for g in ("seen", "unseen", "harmonic") for a in ov.ARMS},
            "steps": params.train.steps, "batch_size": params.train.batch_size, "n_train": settings.n_train,
            "n_test": settings.n_test, "n_synthetic": settings.n_synthetic,
            "table": records(table), "runs": records(study.runs), "_inputs": {"params": params,
                                                                             "model_dir": params.resolve_path(params.model.path)}}
