"""Train the embedded toy model from scratch: ``dmutils train-toy-model``.

Stages, all on scenes of the toy world rendered on the fly once at start:
1. the VAE (reconstruction + a small KL), then the latent scaling factor (1 / std of the latents), as SD does;
   optionally (``--decoder-steps``, also on a saved model with ``--init-from``) the decoder alone on whole
   images, SD's ft-MSE decoder recipe: the latent space stays, so a trained UNet stays valid;
2. the UNet and the text encoder's embeddings together, epsilon prediction with min-SNR weighting, 10% empty
   captions for classifier-free guidance, an EMA of the weights that is what gets saved.
The result is saved with ``StableDiffusionPipeline.save_pretrained`` (safetensors) and loads with
``StableDiffusionPipeline.from_pretrained(folder)``, like SD 1.5. A log sits beside the weights.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dmutils.data.toyworld import CLASS_NAMES, CLASSES, make_scene
from dmutils.paths import ensure_writable_dir
from dmutils.progress import progress_bar
from dmutils.progress import write as progress_write
from dmutils.toy import build


def render_corpus(n: int, seed: int, append_fraction: float = 0.25) -> tuple[torch.Tensor, list[str]]:
    """n scenes as a uint8 tensor (n, 3, 64, 64) and their captions; some with class words appended."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for i in progress_bar(range(n), desc="render", leave=False):
        s = make_scene(seed * 10_000_000 + i, size=build.IMAGE_SIZE)
        cap = s.caption
        if rng.random() < append_fraction:
            cap = f"{cap}; {' '.join(s.classes)}"
        images.append(torch.from_numpy(s.image).permute(2, 0, 1))
        captions.append(cap)
    return torch.stack(images), captions


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


class Log:
    """Lines to stdout and to ``training_log.txt`` beside the weights."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a")

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        progress_write(line)
        self.f.write(line + "\n")
        self.f.flush()


def out_of_time(stage: str, step: int, t0: float, max_minutes: float | None, log: Log) -> bool:
    """True (and a log line) once a stage has run past its time budget; stages end cleanly and are saved."""
    if max_minutes and time.time() - t0 > 60 * max_minutes:
        log(f"{stage} stopped at step {step} (time budget of {max_minutes} min)")
        return True
    return False


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, lr: float, device, log: Log, max_minutes: float | None, gen: torch.Generator):
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train().to(device)
    t0 = time.time()
    bar = progress_bar(range(steps), desc="vae")
    for step in bar:
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        # the VAE is fully convolutional: 32 px crops teach it the same at a quarter of the cost
        i, j = torch.randint(0, images.shape[-1] - 32 + 1, (2,), generator=gen).tolist()
        x = _to_unit(images[idx, :, i:i + 32, j:j + 32]).to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 100 == 0:
            log(f"vae step {step} loss {loss.item():.4f}")
        if out_of_time("vae", step, t0, max_minutes, log):
            break
    vae.eval()
    return vae


def finetune_decoder(vae, images: torch.Tensor, latents: torch.Tensor, steps: int, batch: int, lr: float, device, log: Log,
                     max_minutes: float | None, gen: torch.Generator) -> int:
    """Steps run. SD's ft-MSE recipe: the encoder stays frozen, so the latent space the UNet has learned is unchanged,
    and only the decoder learns on. On whole images with a cosine schedule, from latent means, as the UNet
    sees them (``latents``: ``encode_all`` of ``images``, unscaled). The first VAE stage stops early on 32 px
    crops; this stage sharpens the generator's edges."""
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    vae.decoder.train().to(device)
    t0 = time.time()
    bar = progress_bar(range(steps), desc="decoder")
    for step in bar:
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = _to_unit(images[idx]).to(device)
        rec = vae.decode(latents[idx].to(device)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 100 == 0:
            log(f"decoder step {step} loss {loss.item():.4f} elapsed {time.time() - t0:.0f}s")
        if out_of_time("decoder", step, t0, max_minutes, log):
            break
    vae.requires_grad_(True)
    vae.eval()
    return step + 1


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor, device) -> float:
    """PSNR (dB, images in [-1, 1]) of decode(encode(x).mean) against x."""
    x = _to_unit(images).to(device)
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return float(10 * torch.log10(4.0 / F.mse_loss(rec, x)))


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, device, batch: int = 256) -> torch.Tensor:
    out = [vae.encode(_to_unit(images[i:i + batch]).to(device)).latent_dist.mean.cpu() for i in range(0, len(images), batch)]
    return torch.cat(out)


def train_unet(unet, text_encoder, tokenizer, scheduler, latents, captions, args, device, log: Log, gen: torch.Generator):
    from diffusers.training_utils import EMAModel, compute_snr

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=2 / 3)
    ids_all = tokenizer(captions, padding="max_length", max_length=build.MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=build.MAX_LENGTH, return_tensors="pt").input_ids[0]
    unet.train().to(device)
    text_encoder.train().to(device)
    t0 = time.time()
    bar = progress_bar(range(args.steps), desc="unet")
    for step in bar:
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        x0 = latents[idx].to(device)
        ids = ids_all[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < 0.1
        ids[drop] = empty
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen).to(device)
        xt = scheduler.add_noise(x0, noise, t)
        cond = text_encoder(ids.to(device)).last_hidden_state
        pred = unet(xt, t, cond).sample
        snr = compute_snr(scheduler, t)
        weight = torch.clamp(snr, max=5.0) / snr
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        ema_step(loss, params, opt, sched, ema)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 100 == 0:
            log(f"unet step {step} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} elapsed {time.time() - t0:.0f}s")
        if out_of_time("unet", step, t0, args.max_minutes, log):
            break
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    return step + 1, time.time() - t0


def ema_step(loss: torch.Tensor, params, opt, sched, ema) -> None:
    """One step of the denoiser trainings (UNet, MMDiT): backward, clip at 1, optimizer and schedule, EMA."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    ema.step(params)


def train_toy_model(args: argparse.Namespace) -> Path:
    out = ensure_writable_dir(Path(args.out or DEFAULT_OUT["sd"]), "--out")  # before the imports and the corpus: a bad --out costs nothing
    from dmutils.pipeline import bind_pil_image_processors

    bind_pil_image_processors()
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    log = Log(out / "training_log.txt")
    log(f"train-toy-model: {vars(args)} device={device} torch={torch.__version__}")
    t_start = time.time()
    images, captions = render_corpus(args.scenes, args.seed)
    log(f"rendered {len(images)} scenes in {time.time() - t_start:.0f}s; e.g. {captions[:3]}")

    if args.init_from:
        # continue training a saved model: its VAE and tokenizer stay, UNet and text encoder go on learning
        from diffusers import StableDiffusionPipeline

        init = StableDiffusionPipeline.from_pretrained(args.init_from, safety_checker=None)
        tokenizer, text_encoder, vae, unet = init.tokenizer, init.text_encoder, init.vae, init.unet
        scheduler = build.make_scheduler()
        log(f"continuing from {args.init_from}")
    else:
        tokenizer = build.make_tokenizer(out / "tokenizer")
        text_encoder = build.make_text_encoder(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
        vae, unet, scheduler = build.make_vae(), build.make_unet(), build.make_scheduler()

    t_vae = time.time()
    if not args.init_from:
        train_vae(vae, images, args.vae_steps, 32, 1e-3, device, log, args.vae_minutes, gen)
    # the encoder is final from here on (the decoder stage freezes it): one encoding serves both later stages
    latents = encode_all(vae, images, device) if args.decoder_steps or args.steps or not args.init_from else None
    if not args.init_from:  # a new VAE needs its scaling factor even without a UNet stage
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    psnr_before = reconstruction_psnr(vae, images[:256], device)
    decoder_steps = 0
    if args.decoder_steps:
        decoder_steps = finetune_decoder(vae, images, latents, args.decoder_steps, 32, args.decoder_lr, device, log,
                                         args.decoder_minutes, gen)
    vae_psnr = reconstruction_psnr(vae, images[:256], device)
    log(f"vae done in {time.time() - t_vae:.0f}s: reconstruction PSNR {vae_psnr:.2f} dB (before the decoder stage {psnr_before:.2f})")

    steps_done, unet_seconds = 0, 0.0
    if args.steps:
        log(f"latents {tuple(latents.shape[1:])}, scaling_factor {vae.config.scaling_factor:.4f}")
        steps_done, unet_seconds = train_unet(unet, text_encoder, tokenizer, scheduler, latents * vae.config.scaling_factor,
                                              captions, args, device, log, gen)
    pipe = StableDiffusionPipeline(vae=vae.cpu(), text_encoder=text_encoder.cpu(), tokenizer=tokenizer, unet=unet.cpu(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    total = time.time() - t_start
    summary = {"seed": args.seed, "scenes": args.scenes, "unet_steps": steps_done, "init_from": args.init_from, "batch": args.batch, "lr": args.lr,
               "unet_seconds": round(unet_seconds), "total_seconds": round(total), "vae_psnr_db": round(vae_psnr, 2),
               "decoder_steps": decoder_steps, "vae_psnr_db_before_decoder_stage": round(psnr_before, 2),
               "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "classes": CLASS_NAMES, "class_list": CLASSES}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    log(f"saved to {out} after {total / 60:.1f} min in all")
    return out


DEFAULT_OUT = {"sd": "models/toy-sd", "sd3": "models/toy-sd3"}
