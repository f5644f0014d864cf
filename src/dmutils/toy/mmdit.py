"""The toy MMDiT: an SD3-shaped model of the toy world, trained with rectified flow (``train-toy-model --family sd3``).

Parts (the classes of ``StableDiffusion3Pipeline``, scaled down):
- transformer: ``SD3Transformer2DModel`` with patch size 1 on the toy VAE's 16x16x4 latents, so every block's
  joint attention lies on a 16x16 grid at 64 px (the toy UNet's best map level); RMS q/k norm as SD3.5;
- VAE: the toy UNet's (``models/toy-sd/vae``, factor 4), its weights copied; ``shift_factor`` and ``scaling_factor``
  are re-measured on the corpus (SD3's latent normalisation: (z - shift) * scale);
- text encoders: two ``CLIPTextModelWithProjection`` over the toy vocabulary (the toy tokenizer, saved as
  ``tokenizer`` and ``tokenizer_2``) with ONE transformer layer. SD3 reads the penultimate hidden state, which here is
  the token + position embedding: the sequence the transformer sees is not mixed by the encoder (the toy UNet's
  lesson: a jointly trained mixing encoder let the second class word absorb the first). The layer only feeds the
  pooled vector (EOS token, projected), SD3's global conditioning. With ``--pooled none`` (the default) that projection
  is zero and frozen, so the pooled vector is always 0 and the caption reaches the image only through joint attention,
  as in the UNet only through cross-attention. Why: the first toy MMDiT (pooled from the caption) drew the same
  objects when its token sequence was the empty caption's (``bench toy-model``'s ``presence_rate_by_route``; docs/research-notes.md,
  "The toy MMDiT"): it read the whole caption from the pooled AdaLN vector, and its attention maps localised nothing. No T5 (``text_encoder_3=None``): the pipeline
  appends ``max_sequence_length`` (256 by default) zero tokens.
  MMDiT mixes text tokens anyway: in every block they attend to each other and to the image (joint attention), so
  word separation is left to the transformer; this is what the toy MMDiT measures against the toy UNet;
- scheduler: ``FlowMatchEulerDiscreteScheduler``.

Training as SD3's (diffusers' ``train_dreambooth_sd3.py``): x_t = (1 - s) x0 + s eps, the transformer predicts
eps - x0, s drawn logit-normal (``compute_density_for_timestep_sampling``) and mapped onto the scheduler's sigmas;
10% empty captions for classifier-free guidance; an EMA of the weights is what gets saved.

The 256 zero T5 tokens are all the same token: in joint attention n identical keys act as one key whose logit is
raised by log n, and every per-token layer maps them alike. Training therefore carries ONE zero token with a log 256
attention bias (:class:`RepeatedTokenJointProcessor`), which computes exactly what the pipeline computes with 256
(333 -> 78 text tokens, about half the cost of a step). The saved model uses diffusers' own processors.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dmutils.data.toyworld import CLASS_NAMES, CLASSES
from dmutils.paths import ensure_writable_dir
from dmutils.progress import progress_bar
from dmutils.toy import build
from dmutils.toy.unet import (
    Log,
    ema_step,
    encode_all,
    out_of_time,
    reconstruction_psnr,
    render_corpus,
)

T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length: the zero tokens it appends without a T5
TEXT_LAYERS = 1  # SD3 reads hidden_states[-2]: with one layer that is the (non-mixing) embedding


def make_text_encoder(vocab_size: int, eos_token_id: int, bos_token_id: int, hidden: int = build.TEXT_DIM):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4, max_position_embeddings=build.MAX_LENGTH, eos_token_id=eos_token_id,
        bos_token_id=bos_token_id, pad_token_id=eos_token_id, projection_dim=hidden,
    )
    return CLIPTextModelWithProjection(cfg)


def silence_pooled(text_encoder) -> None:
    """Zero and freeze the encoder's pooled projection: the pooled vector is 0 whatever the caption (``--pooled none``)."""
    torch.nn.init.zeros_(text_encoder.text_projection.weight)
    text_encoder.text_projection.requires_grad_(False)


def make_transformer(layers: int = 8, heads: int = 4, head_dim: int = 32, text_dim: int = 2 * build.TEXT_DIM):
    """16x16 latent, patch size 1: a 16x16 token grid; ``text_dim`` = the two CLIP encoders' widths together."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=build.LATENT_SIZE, patch_size=1, in_channels=4, out_channels=4, num_layers=layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text_dim,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=text_dim, pos_embed_max_size=build.LATENT_SIZE,
        qk_norm="rms_norm",
    )


def make_scheduler(shift: float = 1.0):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def load_vae(folder: str | Path):
    """The toy VAE from a saved toy model (``models/toy-sd``): its weights copied, factor 4."""
    from diffusers import AutoencoderKL

    source = Path(folder)
    source = source / "vae" if (source / "vae").is_dir() else source
    try:
        return AutoencoderKL.from_pretrained(source)
    except (OSError, ValueError) as e:
        from dmutils.errors import ParamsError

        raise ParamsError(f"--vae-from: no VAE at {source} ({str(e).splitlines()[0]}); give a toy model folder such as "
                          f"models/toy-sd (re-make it with `dmutils train-toy-model`)") from None


class RepeatedTokenJointProcessor:
    """SD3's joint attention (``JointAttnProcessor2_0``) where the LAST text token stands for ``repeats`` identical
    tokens: its key gets a log(repeats) bias. Exact for identical tokens (their keys, values and outputs are the same)."""

    def __init__(self, repeats: int) -> None:
        self.log_repeats = math.log(repeats)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs):
        batch, n_img = hidden_states.shape[:2]

        def heads(x):
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        eq, ek, ev = (heads(p(encoder_hidden_states)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_added_q is not None:
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
        q, k, v = torch.cat([q, eq], 2), torch.cat([k, ek], 2), torch.cat([v, ev], 2)
        bias = torch.zeros(1, 1, 1, k.shape[2], dtype=q.dtype, device=q.device)
        bias[..., -1] = self.log_repeats
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, q.shape[1] * q.shape[-1]).to(q.dtype)
        image, text = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return attn.to_out[1](attn.to_out[0](image)), text


def encode_captions(text_encoders, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``StableDiffusion3Pipeline.encode_prompt`` makes of token ids without a T5, the 256 zero tokens as one
    (see :class:`RepeatedTokenJointProcessor`): (batch, 77 + 1, channels) and the pooled (batch, channels)."""
    seqs, pooled = [], []
    for te in text_encoders:
        out = te(ids, output_hidden_states=True)
        seqs.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    seq = torch.cat(seqs, dim=-1)
    seq = torch.cat([seq, seq.new_zeros(seq.shape[0], 1, seq.shape[-1])], dim=1)
    return seq, torch.cat(pooled, dim=-1)


def train_transformer(transformer, text_encoders, tokenizer, scheduler, latents, captions, args, device, log: Log,
                      gen: torch.Generator) -> tuple[int, float]:
    from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling

    params = [p for p in list(transformer.parameters()) + [p for te in text_encoders for p in te.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    warm = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=2 / 3)
    ids_all = tokenizer(captions, padding="max_length", max_length=build.MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=build.MAX_LENGTH, return_tensors="pt").input_ids[0]
    saved = dict(transformer.attn_processors)
    transformer.set_attn_processor(RepeatedTokenJointProcessor(T5_TOKENS))
    sigmas_all = scheduler.sigmas.float()  # descending, num_train_timesteps of them, shifted as at inference
    transformer.train().to(device)
    for te in text_encoders:
        te.train().to(device)
    t0 = time.time()
    bar = progress_bar(range(args.steps), desc="transformer")
    step = -1
    for step in bar:
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        x0 = latents[idx].to(device)
        ids = ids_all[idx].clone()
        ids[torch.rand(args.batch, generator=gen) < 0.1] = empty
        noise = torch.randn(x0.shape, generator=gen).to(device)
        u = compute_density_for_timestep_sampling("logit_normal", args.batch, logit_mean=0.0, logit_std=1.0, generator=gen)
        k = (u * scheduler.config.num_train_timesteps).long().clamp(max=len(sigmas_all) - 1)
        sigma = sigmas_all[k].to(device)
        xt = (1.0 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
        seq, pooled = encode_captions(text_encoders, ids.to(device))
        pred = transformer(hidden_states=xt, timestep=sigma * scheduler.config.num_train_timesteps, encoder_hidden_states=seq,
                           pooled_projections=pooled, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        ema_step(loss, params, opt, sched, ema)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0:
            log(f"transformer step {step} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} elapsed {time.time() - t0:.0f}s")
        if out_of_time("transformer", step, t0, args.max_minutes, log):
            break
    ema.copy_to(params)
    transformer.set_attn_processor(saved)
    transformer.eval()
    for te in text_encoders:
        te.eval()
    return step + 1, time.time() - t0


def train_toy_sd3(args: argparse.Namespace) -> Path:
    out = ensure_writable_dir(Path(args.out or "models/toy-sd3"), "--out")  # before the imports: a bad --out costs nothing
    from dmutils.pipeline import bind_pil_image_processors

    bind_pil_image_processors()
    from diffusers import StableDiffusion3Pipeline

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    log = Log(out / "training_log.txt")
    log(f"train-toy-model --family sd3: {vars(args)} device={device} torch={torch.__version__}")
    t_start = time.time()
    if args.init_from:  # continue training a saved toy MMDiT: its VAE and tokenizers stay
        init = StableDiffusion3Pipeline.from_pretrained(args.init_from, text_encoder_3=None, tokenizer_3=None)
        tokenizer, vae, transformer = init.tokenizer, init.vae, init.transformer
        text_encoders = [init.text_encoder, init.text_encoder_2]
        scheduler = make_scheduler(init.scheduler.config.shift)
        log(f"continuing from {args.init_from}")
    else:
        tokenizer = build.make_tokenizer(out / "tokenizer")
        text_encoders = [make_text_encoder(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id) for _ in range(2)]
        transformer = make_transformer(args.layers, args.heads, args.head_dim)
        scheduler = make_scheduler(args.shift)
        vae = load_vae(args.vae_from)
        log(f"VAE copied from {args.vae_from}")
    if args.pooled == "none":
        for te in text_encoders:
            silence_pooled(te)
    images, captions = render_corpus(args.scenes, args.seed)  # after the parts: a bad --vae-from fails at once
    log(f"rendered {len(images)} scenes in {time.time() - t_start:.0f}s; e.g. {captions[:3]}")
    vae.to(device).eval()
    latents = encode_all(vae, images, device)
    if not args.init_from:  # SD3's latent normalisation, measured on this corpus
        shift = float(latents.mean())
        vae.register_to_config(shift_factor=shift, scaling_factor=float(1.0 / (latents - shift).std()))
    vae_psnr = reconstruction_psnr(vae, images[:256], device)
    n_params = sum(p.numel() for p in transformer.parameters())
    log(f"latents {tuple(latents.shape[1:])}, shift_factor {vae.config.shift_factor:.4f}, scaling_factor "
        f"{vae.config.scaling_factor:.4f}, VAE PSNR {vae_psnr:.2f} dB; transformer {n_params / 1e6:.2f} M parameters")

    steps_done, seconds = 0, 0.0
    if args.steps:
        z = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        steps_done, seconds = train_transformer(transformer, text_encoders, tokenizer, scheduler, z, captions, args, device, log, gen)
    pipe = StableDiffusion3Pipeline(transformer=transformer.cpu(), scheduler=scheduler, vae=vae.cpu(), text_encoder=text_encoders[0].cpu(),
                                    tokenizer=tokenizer, text_encoder_2=text_encoders[1].cpu(), tokenizer_2=tokenizer,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(out, safe_serialization=True)
    total = time.time() - t_start
    summary = {"family": "sd3", "seed": args.seed, "scenes": args.scenes, "transformer_steps": steps_done, "init_from": args.init_from,
               "batch": args.batch, "lr": args.lr, "transformer_parameters": n_params, "transformer_seconds": round(seconds),
               "total_seconds": round(total), "vae_psnr_db": round(vae_psnr, 2), "vae_from": None if args.init_from else args.vae_from,
               "scheduler_shift": scheduler.config.shift, "t5_zero_tokens": T5_TOKENS, "pooled": args.pooled,
               "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "classes": CLASS_NAMES, "class_list": CLASSES}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    log(f"saved to {out} after {total / 60:.1f} min in all")
    return out
