"""Capture from an SD3.5-shaped MMDiT (joint attention, dual-attention blocks) on a tiny random pipeline."""
import json

import numpy as np
import pytest
import torch

from dmutils.attention import CaptureSpec, capture, joint
from dmutils.attention.adapters import CaptureError, family_for
from dmutils.attention.adapters.families import SD3
from dmutils.testing.dits import save_tiny_sd3, tiny_sd3_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a dog on the grass", "an aeroplane in the sky"]
GRID = 8  # 32 px image, VAE factor 2, patch 2


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline()


def generate(pipe, steps=2, **kw):
    gens = [torch.Generator().manual_seed(s) for s in range(len(PROMPTS))]
    return pipe(PROMPTS, generator=gens, num_inference_steps=steps, output_type="np", max_sequence_length=8, **kw).images


def spec(**kw):
    return CaptureSpec(**{"cross_resolutions": (GRID,), "self_resolutions": (GRID,), **kw})


def test_images_unchanged_processors_restored_also_on_error(pipe):
    assert family_for(pipe) is SD3
    before = dict(pipe.transformer.attn_processors)
    plain = generate(pipe)
    with capture(pipe, spec()) as rec:
        images = generate(pipe)
    np.testing.assert_allclose(images, plain, atol=1e-5)
    assert dict(pipe.transformer.attn_processors) == before
    # 4 joint layers + 2 attn2 (SD3.5's dual-attention blocks 0-1), 2 steps each
    assert rec.state.counts == {("cross", GRID): 8, ("self", GRID): 12}

    def stop(*args, **kwargs):
        assert type(pipe.transformer.transformer_blocks[0].attn.processor).__name__ == "JointCaptureProcessor"
        raise RuntimeError("stop mid-generation")

    with pytest.raises(RuntimeError, match="stop mid-generation"), capture(pipe, spec()):
        generate(pipe, callback_on_step_end=stop)
    assert dict(pipe.transformer.attn_processors) == before


def _joint_inputs(pipe, block: int):
    """One joint layer's inputs (image and text tokens) at the first step of a generation."""
    attn = pipe.transformer.transformer_blocks[block].attn
    seen = {}
    hook = attn.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    try:
        generate(pipe, steps=1)
    finally:
        hook.remove()
    return attn, seen["hidden_states"], seen["encoder_hidden_states"]


def _reference(pipe, block: int, joint_norm: str):
    """Head-averaged maps of one joint layer at one step, computed directly from the layer's inputs."""
    attn, x, c = _joint_inputs(pipe, block)
    n = x.shape[0] // 2  # the conditional half of the CFG batch
    heads = lambda t: t.view(t.shape[0], -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)
    with torch.no_grad():
        q = attn.norm_q(heads(attn.to_q(x[n:])))
        k = torch.cat([attn.norm_k(heads(attn.to_k(x[n:]))), attn.norm_added_k(heads(attn.add_k_proj(c[n:])))], 2)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    probs = scores.softmax(-1)
    img = x.shape[1]
    cross = scores[..., img:img + 77].softmax(-1) if joint_norm == "text_softmax" else probs[..., img:img + 77]
    self_ = probs[..., :img] / probs[..., :img].sum(-1, keepdim=True)
    return cross.mean(1), self_.mean(1)


@pytest.mark.parametrize("joint_norm", ["text_softmax", "joint_slice"])
def test_maps_equal_the_joint_softmax_computed_directly(pipe, joint_norm, monkeypatch):
    used = []  # joint_slice: normalised by the layer's own logsumexp (the CPU flash kernel), not by scoring every column
    has = joint._has_lse_kernel
    monkeypatch.setattr(joint, "_has_lse_kernel", lambda *a: used.append(has(*a)) or used[-1])
    cross_ref, self_ref = _reference(pipe, 2, joint_norm)  # block 2: no attn2, whose self maps would be averaged in
    with capture(pipe, spec(transformer_blocks=(2,), joint_norm=joint_norm)) as rec:
        generate(pipe, steps=1)
    assert all(used) and len(used) > 0 if joint_norm == "joint_slice" else not used
    maps = rec.maps()
    got = torch.stack([maps.cross(i, GRID) for i in range(2)]).flatten(2).transpose(1, 2)  # (N, pixels, 77)
    torch.testing.assert_close(got, cross_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.stack([maps.self_attention(i, GRID) for i in range(2)]), self_ref, atol=1e-5, rtol=1e-4)
    sums = got.sum(-1)
    if joint_norm == "text_softmax":  # a distribution over the 77 CLIP tokens at every pixel
        torch.testing.assert_close(sums, torch.ones_like(sums))
    else:  # the CLIP columns of the joint softmax: part of each row's mass, the rest is image and T5
        assert bool((sums > 0).all() and (sums < 1).all())
    rows = maps.self_attention(0, GRID).sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))


def test_chunked_heads_equal_unchunked(pipe, monkeypatch):
    with capture(pipe, spec()) as rec:
        generate(pipe)
    whole = rec.maps()
    monkeypatch.setattr(joint, "MAX_CHUNK_BYTES", 1)  # one head at a time
    with capture(pipe, spec()) as rec:
        generate(pipe)
    chunked = rec.maps()
    torch.testing.assert_close(chunked.cross(1, GRID), whole.cross(1, GRID), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked.self_attention(1, GRID), whole.self_attention(1, GRID), atol=1e-6, rtol=1e-5)


def test_text_isolated_cuts_text_to_text_attention_only():
    """Under the ablation a text token's output does not move when another text token changes; the image's does."""
    from dmutils.attention.ablations import TextIsolatedJointProcessor

    pipe = tiny_sd3_pipeline()
    attn, x, c = _joint_inputs(pipe, 0)
    bumped = c.clone()
    bumped[:, 3] += 1.0
    others = [i for i in range(c.shape[1]) if i != 3]
    with torch.no_grad():
        plain = [attn(hidden_states=x, encoder_hidden_states=e) for e in (c, bumped)]
        attn.set_processor(TextIsolatedJointProcessor())
        cut = [attn(hidden_states=x, encoder_hidden_states=e) for e in (c, bumped)]
    assert not torch.allclose(plain[0][1][:, others], plain[1][1][:, others], atol=1e-4)  # text mixes by default
    torch.testing.assert_close(cut[0][1][:, others], cut[1][1][:, others])  # not under the ablation
    assert not torch.allclose(cut[0][1][:, 3], cut[1][1][:, 3], atol=1e-4)  # the token itself still moves
    assert not torch.allclose(cut[0][0], cut[1][0], atol=1e-4)  # and the image still reads the text
    assert not torch.allclose(cut[0][1], plain[0][1], atol=1e-4)


def test_capture_inside_text_isolated_keeps_its_images_and_both_restore(pipe):
    from dmutils.attention.ablations import text_isolated

    before = dict(pipe.transformer.attn_processors)
    plain = generate(pipe)
    with text_isolated(pipe.transformer):
        cut = generate(pipe)
        with capture(pipe, spec()) as rec:
            captured = generate(pipe)
        assert type(pipe.transformer.transformer_blocks[0].attn.processor).__name__ == "TextIsolatedJointProcessor"
    assert np.abs(cut - plain).max() > 1e-3  # the ablation changes the images
    np.testing.assert_allclose(captured, cut, atol=1e-5)  # capture honours it, as it leaves images unchanged
    assert rec.state.counts[("cross", GRID)] == 8
    assert dict(pipe.transformer.attn_processors) == before
    np.testing.assert_allclose(generate(pipe), plain, atol=1e-5)


def test_layer_selection_by_depth_and_index_and_clear_errors(pipe):
    with capture(pipe, spec(depth=(1 / 3, 2 / 3))) as rec:  # the middle third of 4 blocks: depths 0.375, 0.625
        generate(pipe)
        assert [layer.name for layer in rec.layers] == ["transformer_blocks.1.attn", "transformer_blocks.1.attn2",
                                                        "transformer_blocks.2.attn"]
    assert rec.state.counts == {("cross", GRID): 4, ("self", GRID): 6}
    with pytest.raises(CaptureError, match=r"transformer_blocks \[9\] do not exist: the sd3 transformer has blocks 0-3"):
        capture(pipe, spec(transformer_blocks=(9,)))
    with pytest.raises(CaptureError, match=r"resolution\(s\) \[16\] do not exist.*patch grid.*available: \[8\]"):
        with capture(pipe, spec(cross_resolutions=(16,))):
            generate(pipe)
    with pytest.raises(CaptureError, match="text_part is 't5' but this SD3 pipeline has no T5"):
        capture(pipe, spec(text_part="t5"))


def test_word_lookup_with_the_clip_tokenizer(pipe):
    with capture(pipe, spec(self_resolutions=())) as rec:
        generate(pipe)
    maps = rec.maps()
    assert maps.words(1) == ["an", "aeroplane", "in", "the", "sky"]
    pieces = len(pipe.tokenizer.tokenize("aeroplane"))
    assert pieces > 1 and maps.token_positions(1, "aeroplane") == list(range(2, 2 + pieces))  # after BOS, "an"
    assert maps.word_map(0, "dog").shape == (GRID, GRID)


def test_generate_end_to_end_with_voc_sd35_from_a_saved_pipeline(tmp_path):
    """``dmutils generate params/voc_sd35.yaml`` (its classes, prompts, capture settings) on a saved tiny SD3.5."""
    from dmutils.commands import main
    from dmutils.paths import REPO_ROOT

    model = save_tiny_sd3(tmp_path / "tiny-sd3")
    assert json.loads((model / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    out = tmp_path / "data"
    sets = [f"model.path={model}", "model.dtype=float32", "model.device=cpu", "model.height=32", "model.width=32",
            "model.num_inference_steps=2", f"capture.cross_resolutions=[{GRID}]", f"capture.self_resolutions=[{GRID}]",
            "dataset.num_samples=2", "dataset.batch_size=2", "dataset.workers=0", "dataset.min_area=0", f"dataset.out_dir={out}"]
    argv = ["generate", str(REPO_ROOT / "params/voc_sd35.yaml"), "--no-progress"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    assert len(records) == 2 and ok, records
    with np.load(out / "maps" / f"{ok[0]['id']}.npz") as z:
        assert z[f"cross_{GRID}"].shape == (len(ok[0]["classes"]), GRID, GRID)


def test_text_part_t5_reads_the_t5_tokens_with_the_t5_tokenizer():
    pipe = tiny_sd3_pipeline(t5=True)
    with capture(pipe, spec(self_resolutions=(), text_part="t5", joint_norm="text_softmax")) as rec:
        generate(pipe)
    maps = rec.maps()
    assert maps.cross(0, GRID).shape == (8, GRID, GRID)  # max_sequence_length T5 positions after CLIP's 77
    assert rec.tokenizer is pipe.tokenizer_3
    pieces = pipe.tokenizer_3.tokenize("aeroplane")
    assert len(pieces) > 1 and maps.token_positions(1, "aeroplane") == list(range(1, 1 + len(pieces)))  # T5: no BOS
    sums = maps.cross(1, GRID).sum(0)
    torch.testing.assert_close(sums, torch.ones_like(sums))  # text_softmax over the T5 part alone
    with capture(pipe, spec(self_resolutions=())) as rec:  # the CLIP part of the same pipeline
        generate(pipe)
    assert rec.maps().cross(0, GRID).shape == (77, GRID, GRID)
