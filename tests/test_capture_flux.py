"""Capture from a FLUX.1-shaped transformer (dual- then single-stream blocks, text first, no CFG batch)."""
import json

import numpy as np
import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb

from dmutils.attention import CaptureSpec, capture, joint
from dmutils.attention.adapters import CaptureError, family_for
from dmutils.attention.adapters.families import FLUX1
from dmutils.testing.dits import save_tiny_flux, tiny_flux_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a dog on the grass", "an aeroplane in the sky"]
GRID, TEXT = 8, 16  # 32 px image -> 16x16 latent -> 8x8 packed tokens; max_sequence_length 16 T5 tokens


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def generate(pipe, steps=2, **kw):
    gens = [torch.Generator().manual_seed(s) for s in range(len(PROMPTS))]
    return pipe(PROMPTS, generator=gens, num_inference_steps=steps, output_type="np", max_sequence_length=TEXT,
                guidance_scale=3.5, height=32, width=32, **kw).images


def spec(**kw):
    return CaptureSpec(**{"cross_resolutions": (GRID,), "self_resolutions": (GRID,), **kw})


def test_images_unchanged_processors_restored_also_on_error(pipe):
    assert family_for(pipe) is FLUX1
    before = dict(pipe.transformer.attn_processors)
    plain = generate(pipe)
    with capture(pipe, spec()) as rec:
        images = generate(pipe)
    np.testing.assert_allclose(images, plain, atol=1e-5)
    assert dict(pipe.transformer.attn_processors) == before
    assert rec.state.counts == {("cross", GRID): 12, ("self", GRID): 12}  # 2 dual + 4 single blocks, 2 steps
    assert rec.state.cond == slice(0, 2) and rec.maps().num_samples == 2  # guidance-distilled: every row is conditional

    def stop(*args, **kwargs):
        raise RuntimeError("stop mid-generation")

    with pytest.raises(RuntimeError, match="stop mid-generation"), capture(pipe, spec()):
        generate(pipe, callback_on_step_end=stop)
    assert dict(pipe.transformer.attn_processors) == before


def _reference(pipe, name: str, joint_norm: str):
    """Head-averaged maps of one layer at one step, from its inputs: [text, image] order, rotary applied."""
    attn = pipe.transformer.get_submodule(name)
    seen = {}
    hook = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        generate(pipe, steps=1)
    finally:
        hook.remove()
    x, c, rope = seen["hidden_states"], seen.get("encoder_hidden_states"), seen["image_rotary_emb"]
    heads = lambda t: t.unflatten(-1, (-1, attn.head_dim))
    with torch.no_grad():
        q, k = attn.norm_q(heads(attn.to_q(x))), attn.norm_k(heads(attn.to_k(x)))
        if c is not None:
            q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(c))), q], 1)
            k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(c))), k], 1)
        q, k = (apply_rotary_emb(t, rope, sequence_dim=1).transpose(1, 2) for t in (q, k))
    scores = (q[:, :, TEXT:] @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    probs = scores.softmax(-1)
    cross = scores[..., :TEXT].softmax(-1) if joint_norm == "text_softmax" else probs[..., :TEXT]
    self_ = probs[..., TEXT:] / probs[..., TEXT:].sum(-1, keepdim=True)
    return cross.mean(1), self_.mean(1)


@pytest.mark.parametrize("block,name,joint_norm", [(1, "transformer_blocks.1.attn", "text_softmax"),
                                                    (4, "single_transformer_blocks.2.attn", "joint_slice")])
def test_maps_equal_the_joint_softmax_computed_directly(pipe, block, name, joint_norm, monkeypatch):
    used = []  # joint_slice: normalised by the layer's own logsumexp (the CPU flash kernel), not by scoring every column
    has = joint._has_lse_kernel
    monkeypatch.setattr(joint, "_has_lse_kernel", lambda *a: used.append(has(*a)) or used[-1])
    cross_ref, self_ref = _reference(pipe, name, joint_norm)
    with capture(pipe, spec(transformer_blocks=(block,), joint_norm=joint_norm)) as rec:
        generate(pipe, steps=1)
        assert [layer.name for layer in rec.layers] == [name]
    assert all(used) and len(used) > 0 if joint_norm == "joint_slice" else not used
    maps = rec.maps()
    got = torch.stack([maps.cross(i, GRID) for i in range(2)]).flatten(2).transpose(1, 2)  # (N, pixels, TEXT)
    torch.testing.assert_close(got, cross_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.stack([maps.self_attention(i, GRID) for i in range(2)]), self_ref, atol=1e-5, rtol=1e-4)
    sums = got.sum(-1)
    if joint_norm == "text_softmax":
        torch.testing.assert_close(sums, torch.ones_like(sums))
    else:
        assert bool((sums > 0).all() and (sums < 1).all())


def test_chunked_heads_equal_unchunked(pipe, monkeypatch):
    with capture(pipe, spec()) as rec:
        generate(pipe)
    whole = rec.maps()
    monkeypatch.setattr(joint, "MAX_CHUNK_BYTES", 1)
    with capture(pipe, spec()) as rec:
        generate(pipe)
    chunked = rec.maps()
    torch.testing.assert_close(chunked.cross(1, GRID), whole.cross(1, GRID), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked.self_attention(1, GRID), whole.self_attention(1, GRID), atol=1e-6, rtol=1e-5)


def test_streams_depth_and_errors(pipe):
    for streams, names in (("dual", ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]),
                           ("single", [f"single_transformer_blocks.{j}.attn" for j in range(4)])):
        with capture(pipe, spec(flux_streams=streams)) as rec:
            assert [layer.name for layer in rec.layers] == names
    with capture(pipe, spec(depth=(1 / 3, 2 / 3))) as rec:  # 6 blocks: depths 0.42 and 0.58
        assert [layer.name for layer in rec.layers] == ["single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn"]
    with pytest.raises(CaptureError, match=r"no flux attention layer is selected.*flux_streams='dual'"):
        capture(pipe, spec(transformer_blocks=(5,), flux_streams="dual"))
    with pytest.raises(CaptureError, match=r"resolution\(s\) \[16\] do not exist.*packed token grid.*available: \[8\]"):
        with capture(pipe, spec(cross_resolutions=(16,))):
            generate(pipe)


def test_true_cfg_reads_only_the_positive_call(pipe):
    with capture(pipe, spec(self_resolutions=())) as rec:  # a second transformer call per step, on the negative prompt
        generate(pipe, steps=3, negative_prompt=["blurry"] * 2, true_cfg_scale=2.0)
    assert rec.state.steps_recorded == [0, 1, 2] and rec.state.counts == {("cross", GRID): 18}
    # step 0 sees the same latents with or without true CFG: its maps must be the positive prompt's alone
    first = spec(self_resolutions=(), timestep_window=(0.0, 0.3))
    with capture(pipe, first) as rec:
        generate(pipe, steps=3)
    plain = rec.maps().cross(0, GRID)
    with capture(pipe, first) as rec:
        generate(pipe, steps=3, negative_prompt=["blurry"] * 2, true_cfg_scale=2.0)
    torch.testing.assert_close(rec.maps().cross(0, GRID), plain)


def test_word_lookup_with_the_t5_tokenizer(pipe):
    with capture(pipe, spec(self_resolutions=())) as rec:
        generate(pipe)
    maps = rec.maps()
    assert rec.tokenizer is pipe.tokenizer_2 and maps.cross(0, GRID).shape == (TEXT, GRID, GRID)
    assert maps.words(1) == ["an", "aeroplane", "in", "the", "sky"]
    pieces = pipe.tokenizer_2.tokenize("aeroplane")  # '▁aero', 'plane'
    assert len(pieces) > 1 and maps.token_positions(1, "aeroplane") == list(range(1, 1 + len(pieces)))
    assert maps.word_map(0, "dog").shape == (GRID, GRID)


def test_generate_end_to_end_with_voc_flux1_from_a_saved_schnell_shaped_pipeline(tmp_path):
    """``dmutils generate params/voc_flux1.yaml`` (its classes, prompts, capture settings) on a saved tiny FLUX.1-schnell."""
    from dmutils.commands import main
    from dmutils.paths import REPO_ROOT

    model = save_tiny_flux(tmp_path / "tiny-flux", guidance_embeds=False)  # FLUX.1-schnell: no guidance embedding
    assert json.loads((model / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    out = tmp_path / "data"
    sets = [f"model.path={model}", "model.dtype=float32", "model.device=cpu", "model.height=32", "model.width=32",
            "model.num_inference_steps=2", f"capture.cross_resolutions=[{GRID}]", f"capture.self_resolutions=[{GRID}]",
            "dataset.num_samples=2", "dataset.batch_size=2", "dataset.workers=0", "dataset.min_area=0", f"dataset.out_dir={out}"]
    argv = ["generate", str(REPO_ROOT / "params/voc_flux1.yaml"), "--no-progress"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    assert len(records) == 2 and ok, records
    with np.load(out / "maps" / f"{ok[0]['id']}.npz") as z:
        assert z[f"cross_{GRID}"].shape == (len(ok[0]["classes"]), GRID, GRID)
