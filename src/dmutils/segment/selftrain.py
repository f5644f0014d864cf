"""Dataset Diffusion's self-training: relabel the synthetic images with the trained segmenter and
train once more. Pixels the segmenter is unsure of (max probability below
``train.pseudo_label_confidence``) become 255 = ignore, as the uncertain band of the original masks did.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dmutils.config import Params
from dmutils.segment.data import IGNORE_INDEX
from dmutils.segment.models import Segmenter


class PseudoLabeled(torch.utils.data.Dataset):
    """The images of ``dataset`` with labels predicted by ``seg`` (kept in memory)."""

    def __init__(self, seg: Segmenter, dataset, confidence: float, tta: bool = False, batch_size: int = 32):
        from dmutils.segment.evaluate import predict_images

        self.classes, self.root = list(dataset.classes), f"{getattr(dataset, 'root', 'dataset')}[pseudo-labelled]"
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(dataset), batch_size):
            images = [dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))]
            for image, probs in zip(images, predict_images(seg, images, tta)):
                conf, label = probs.max(0)
                label = label.numpy().astype(np.uint8)
                label[conf.numpy() < confidence] = IGNORE_INDEX
                self.samples.append((image, label))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.samples[i]

    @property
    def ignored_fraction(self) -> float:
        return float(np.mean([(lab == IGNORE_INDEX).mean() for _, lab in self.samples]))


def self_train(params: Params, seg: Segmenter, synthetic, extra: list | tuple = (), out_dir: str | Path | None = None,
               progress: bool = False):
    """One round: pseudo-label ``synthetic`` with ``seg``, retrain from scratch on it (plus ``extra``)."""
    from dmutils.segment.train import train_segmenter

    pseudo = PseudoLabeled(seg, synthetic, params.train.pseudo_label_confidence, params.train.tta,
                           params.train.eval_batch_size)
    return train_segmenter(params, [pseudo, *extra], out_dir, progress=progress)
