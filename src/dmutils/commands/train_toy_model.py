"""``dmutils train-toy-model``: the command line of :mod:`dmutils.toy.unet`."""
from __future__ import annotations

import argparse

from dmutils.toy.unet import DEFAULT_OUT, train_toy_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=sorted(DEFAULT_OUT), default="sd",
                        help="sd: the toy UNet (StableDiffusionPipeline); sd3: the toy MMDiT (StableDiffusion3Pipeline, rectified flow)")
    parser.add_argument("--out", default=None, help="output folder (diffusers format); default models/toy-sd or models/toy-sd3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=16000, help="rendered training scenes")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-minutes", type=float, default=8.0, help="stop the VAE stage after this long")
    parser.add_argument("--decoder-steps", type=int, default=0,
                        help="fine-tune the VAE decoder alone this many steps (encoder frozen: the UNet's latents stay valid)")
    parser.add_argument("--decoder-lr", type=float, default=1e-3)
    parser.add_argument("--decoder-minutes", type=float, default=None, help="stop the decoder stage after this long")
    parser.add_argument("--steps", type=int, default=3000, help="UNet optimisation steps (0: keep the UNet as it is)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop the UNet stage after this long")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--init-from", default=None, help="a saved toy model folder to continue training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    sd3 = parser.add_argument_group("--family sd3 (the toy MMDiT; --steps, --lr, --batch, --max-minutes, --init-from as above)")
    sd3.add_argument("--vae-from", default="models/toy-sd", help="toy model whose VAE is copied (a new model only)")
    sd3.add_argument("--layers", type=int, default=8, help="joint transformer blocks")
    sd3.add_argument("--heads", type=int, default=4)
    sd3.add_argument("--head-dim", type=int, default=32)
    sd3.add_argument("--pooled", choices=("none", "caption"), default="none",
                     help="the pooled text vector: none (zero, so the caption reaches the image only through joint attention) "
                          "or caption (SD3's own, which the toy learns to read instead of the tokens)")
    sd3.add_argument("--shift", type=float, default=1.0, help="FlowMatchEulerDiscreteScheduler shift (training sigmas and sampling)")


def main(args: argparse.Namespace) -> int:
    args.out = args.out or DEFAULT_OUT[args.family]
    if args.family == "sd3":
        from dmutils.toy.mmdit import train_toy_sd3

        train_toy_sd3(args)
    else:
        train_toy_model(args)
    return 0
