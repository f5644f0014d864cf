"""The oracle: labels any image the model generates, as the papers' pretrained Mask2Former does.

For the toy world it is a small fully convolutional U-Net trained on the world's real renders, with
photometric augmentation (tint, contrast, blur, noise) so that the colour casts and softness of generated
images (classifier-free guidance tints backgrounds) do not fool it. Its weights ship in
``models/toy-oracle/`` (safetensors); ``dmutils.oracles.toy_unet.train`` re-makes them. Its mIoU on the real
toy test split is printed by ``dmutils bench toy-model`` (``oracle_miou_real``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dmutils.data.toyworld import CLASS_NAMES, make_scene
from dmutils.errors import DataNotFoundError
from dmutils.paths import MODELS_DIR
from dmutils.segment.data import photometric

DEFAULT_DIR = MODELS_DIR / "toy-oracle"
NUM_CLASSES = len(CLASS_NAMES) + 1


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ToyOracle(nn.Module):
    """A three-level U-Net: full-resolution output, so thin star points and ring holes are kept."""

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.dec2, self.dec1 = _block(6 * w, 2 * w), _block(3 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.head(d1)

    @torch.no_grad()
    def predict(self, images: np.ndarray | list[np.ndarray], batch: int = 64) -> np.ndarray:
        """(N, H, W, 3) or (H, W, 3) uint8 images -> (N, H, W) / (H, W) uint8 labels (0 = background)."""
        arr = np.asarray(images)
        single = arr.ndim == 3
        arr = arr[None] if single else arr
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"oracle expects (H, W, 3) or (N, H, W, 3) uint8 images, got shape {arr.shape}")
        self.eval()
        out = []
        for i in range(0, len(arr), batch):
            x = torch.from_numpy(arr[i:i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            out.append(self(x).argmax(1).to(torch.uint8).numpy())
        labels = np.concatenate(out)
        return labels[0] if single else labels


def render_set(n: int, seed_offset: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    scenes = [make_scene(seed_offset + i, size=size) for i in range(n)]
    return np.stack([s.image for s in scenes]), np.stack([s.label for s in scenes])


def train(out: Path = DEFAULT_DIR, scenes: int = 3000, steps: int = 800, batch: int = 16, width: int = 16, seed: int = 0, log=print) -> ToyOracle:
    """Train on the real toy training split's generator (seeds disjoint from val/test) and save."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    images, labels = render_set(scenes, seed_offset=5_000_000)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y_all = torch.from_numpy(labels).long()
    model = ToyOracle(width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        x, y = photometric(x_all[idx], gen), y_all[idx]
        if torch.rand(1, generator=gen).item() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            log(f"oracle step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"width": width, "num_classes": NUM_CLASSES, "classes": ["background", *CLASS_NAMES],
                                                 "scenes": scenes, "steps": steps, "seed": seed,
                                                 "train_seconds": round(time.time() - t0)}, indent=2))
    return model


def load(folder: Path | str = DEFAULT_DIR) -> ToyOracle:
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / "model.safetensors"
    if not path.is_file():
        raise DataNotFoundError(f"toy oracle weights not found at {path}; re-make them with "
                                f"`python -m dmutils.oracles.toy_unet` (about 5 minutes on 2 CPU cores)")
    cfg = json.loads((folder / "config.json").read_text())
    model = ToyOracle(width=cfg["width"], num_classes=cfg["num_classes"])
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def miou(pred: np.ndarray, target: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Dataset-level mIoU (torchmetrics), background included, over the classes present in either."""
    from torchmetrics.functional.classification import multiclass_jaccard_index

    p, t = torch.as_tensor(np.asarray(pred)).long(), torch.as_tensor(np.asarray(target)).long()
    per_class = multiclass_jaccard_index(p, t, num_classes, average=None, ignore_index=255)
    present = torch.bincount(torch.cat([p[t != 255], t[t != 255]]).flatten(), minlength=num_classes)[:num_classes] > 0
    return float(per_class[present].mean())


if __name__ == "__main__":
    torch.set_num_threads(1)
    model = train(log=lambda m: print(m, flush=True))
    imgs, labs = render_set(200, seed_offset=2_000_000)
    print(f"oracle mIoU on 200 real toy test scenes: {miou(model.predict(imgs), labs):.4f}")
