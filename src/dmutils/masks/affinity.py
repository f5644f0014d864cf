"""DiffuMask's semantic affinity learning: a small net learns which nearby pixels belong together.

DiffuMask (arXiv 2303.11681, sec. 3.2) follows AffinityNet (Ahn & Kwak, CVPR 2018): a conv net
predicts a per-pixel embedding e from the image; the affinity of pixels i, j is
``a_ij = exp(-||e_i - e_j||_1)``. It is trained on pixel pairs within a radius drawn from the
*confident* regions of the pseudo-masks -- same label -> a = 1, different -> a = 0, the ignore
band (255) never sampled -- with AffinityNet's balanced loss (1/4 background pairs, 1/4 foreground
pairs, 1/2 cross-label pairs). Its affinities then form a local transition matrix
``T = D^-1 A^beta`` (neighbours within the radius only, so sparse: N x K, never N x N) and the class
maps are propagated by a random walk ``m <- T m`` for a few iterations: attention spreads inside
an object and stops at its edges.

``fit_affinity(images, labels) -> AffinityModel``; ``AffinityModel.propagate(image, maps)``.
Small (3 dilated convs) and fast on CPU at 64 px; seeded, so the same inputs give the same model.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmutils.config import AffinityParams

IGNORE_INDEX = 255


def embedding_net(dim: int = 16, width: int = 16) -> nn.Module:
    """Per-pixel embeddings at full resolution; dilations give a ~15 px receptive field."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.ReLU(),
        nn.Conv2d(width, dim, 1),
    )


def _to_input(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _half_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) within the radius, one of each +/- pair (AffinityNet's search directions)."""
    return [(dy, dx) for dy in range(0, radius + 1) for dx in range(-radius, radius + 1)
            if (dy > 0 or dx > 0) and dy * dy + dx * dx <= radius * radius]


def _pairs(x: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ends of every in-bounds pair (p, p + (dy, dx)) of a (..., H, W) tensor (dy >= 0)."""
    h, w = x.shape[-2:]
    x0, x1 = max(0, -dx), w - max(0, dx)
    return x[..., : h - dy, x0:x1], x[..., dy:, x0 + dx: x1 + dx]


class AffinityModel:
    """A trained embedding net and the random-walk settings that use it."""

    def __init__(self, net: nn.Module, params: AffinityParams):
        self.net, self.params = net.eval(), params

    @torch.no_grad()
    def transition(self, image: np.ndarray) -> torch.Tensor:
        """Row-normalised ``A^beta`` of an (H, W, 3) image as (K, H*W): weights of the K=(2r+1)^2
        window neighbours of each pixel (zero outside the disk and the image)."""
        r, k = self.params.radius, 2 * self.params.radius + 1
        emb = self.net(_to_input(_check_image(image)[None]))  # (1, D, H, W)
        d = emb.shape[1]
        win = F.unfold(emb, k, padding=r).view(d, k * k, -1)
        inside = F.unfold(torch.ones_like(emb[:, :1]), k, padding=r).view(k * k, -1)
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        disk = ((yy**2 + xx**2) <= r * r).reshape(-1, 1).float()
        dist = (win - emb.view(d, 1, -1)).abs().sum(0)  # L1 to the centre pixel
        a = torch.exp(-self.params.beta * dist) * inside * disk  # a^beta = exp(-beta * dist)
        return a / a.sum(0, keepdim=True)

    @torch.no_grad()
    def propagate(self, image: np.ndarray, class_maps: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Random walk of ``class_maps`` (C, h, w) on the image's affinities: (C, H, W) at image size,
        numpy in -> numpy out, torch in -> torch out."""
        image = _check_image(image)
        as_numpy = not isinstance(class_maps, torch.Tensor)
        maps = torch.as_tensor(np.asarray(class_maps) if as_numpy else class_maps).detach().float().cpu()
        if maps.ndim != 3:
            raise ValueError(f"class_maps must be (C, h, w), got shape {tuple(maps.shape)}")
        if not torch.isfinite(maps).all():
            raise ValueError("class_maps has NaN/inf values; reject the sample")
        h, w = image.shape[:2]
        if maps.shape[1:] != (h, w):
            maps = F.interpolate(maps[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        t = self.transition(image)
        k, c = 2 * self.params.radius + 1, maps.shape[0]
        for _ in range(self.params.iterations):
            win = F.unfold(maps[None], k, padding=self.params.radius).view(c, k * k, -1)
            maps = (win * t).sum(1).view(c, h, w)
        return maps.numpy() if as_numpy else maps


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    return image


def _confident_pairs(labels: torch.Tensor, radius: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Flat indices (a, b) into the (B, H, W) labels of every confident pair within the radius, in
    three groups: background-background, object-object (same label) and cross-label pairs."""
    flat = torch.arange(labels.numel()).view(labels.shape)
    groups: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[], [], []]
    for dy, dx in _half_offsets(radius):
        (la, lb), (ia, ib) = _pairs(labels, dy, dx), _pairs(flat, dy, dx)
        valid = (la != IGNORE_INDEX) & (lb != IGNORE_INDEX)
        same = la == lb
        for g, m in enumerate((valid & same & (la == 0), valid & same & (la != 0), valid & ~same)):
            groups[g].append((ia[m], ib[m]))
    return [(torch.cat([a for a, _ in g]), torch.cat([b for _, b in g])) for g in groups]


def fit_affinity(images: np.ndarray, labels: np.ndarray, params: AffinityParams | None = None, seed: int = 0) -> AffinityModel:
    """Train the affinity net on a batch: ``images`` (B, H, W, 3) uint8, ``labels`` (B, H, W) pseudo-masks
    with 255 on the uncertain band. Each step samples ``params.pairs`` confident pairs of each group.
    Deterministic in ``seed``; leaves the global RNG untouched."""
    params = params or AffinityParams()
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (B, H, W, 3) uint8, got shape {images.shape} dtype {images.dtype}")
    if labels.shape != images.shape[:3]:
        raise ValueError(f"labels must be (B, H, W) = {images.shape[:3]} to match the images, got {labels.shape}")
    groups = _confident_pairs(torch.from_numpy(labels.astype(np.int64)), params.radius)
    counts = [len(a) for a, _ in groups]
    if counts[2] == 0 or counts[0] + counts[1] == 0:
        raise ValueError(f"the confident regions of the pseudo-masks give {counts[0] + counts[1]} same-label and "
                         f"{counts[2]} cross-label pairs within radius {params.radius}; affinity needs both "
                         "(masks with background and objects, not all 255)")
    # AffinityNet's balance: 1/4 bg-bg, 1/4 object-object, 1/2 cross-label; an empty group is dropped
    used = [(wt, a, b, g == 2) for g, (wt, (a, b)) in enumerate(zip((0.25, 0.25, 0.5), groups)) if len(a)]
    total = sum(u[0] for u in used)
    x = _to_input(images)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = embedding_net(params.dim, params.width)
    opt = torch.optim.Adam(net.parameters(), lr=params.lr)
    for _ in range(params.steps):
        emb = net(x).permute(1, 0, 2, 3).reshape(params.dim, -1)  # (D, B*H*W)
        loss = emb.new_zeros(())
        for wt, a, b, negative in used:
            pick = torch.randint(len(a), (params.pairs,), generator=gen)
            dist = (emb[:, a[pick]] - emb[:, b[pick]]).abs().sum(0)  # -log(affinity)
            term = -torch.log(-torch.expm1(-dist.clamp_min(1e-6))) if negative else dist  # -log(1 - a) or -log a
            loss = loss + wt / total * term.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return AffinityModel(net, params)
