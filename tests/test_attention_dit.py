"""Cross-attention diffusion transformers (PixArt-Σ, SANA): tiny random-weight pipelines saved to disk and
loaded with from_pretrained, captured with the DiT adapters (dmutils.attention.adapters.dit)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import Attention, SanaLinearAttnProcessor2_0

from dmutils.attention import CaptureSpec, capture
from dmutils.attention.adapters import CaptureError, family_for
from dmutils.attention.adapters.families import PIXART, SANA
from dmutils.attention.adapters.dit import LinearAttentionRecorder, _SideRecorder
from dmutils.attention.processors import CaptureAttnProcessor
from dmutils.data import voc
from dmutils.testing.dits import save_tiny_pixart_sigma, save_tiny_sana

pytestmark = pytest.mark.usefixtures("one_thread")

SAVERS = {"pixart": save_tiny_pixart_sigma, "sana": save_tiny_sana}
ADAPTER = {"pixart": PIXART, "sana": SANA}
PROMPTS = ["a man riding a horse", "an aeroplane and a potted plant"]
GRID = 16  # both tiny pipelines generate at their smallest bin (256 / 512 px): a 16x16 patch grid
SPEC = CaptureSpec(cross_resolutions=(GRID,), self_resolutions=(GRID,))


@pytest.fixture(scope="module", params=sorted(SAVERS))
def saved(request, tmp_path_factory):
    folder = SAVERS[request.param](tmp_path_factory.mktemp(request.param) / "model")
    return request.param, folder, load(folder)


def load(folder):
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts=PROMPTS, steps=2, size=64, guidance=4.5, output_type="latent", **kw):
    """Latents unless images are asked for (SANA's DC-AE decoder at 512 px is most of a tiny run)."""
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size, output_type=output_type,
               generator=[torch.Generator().manual_seed(s) for s in range(len(prompts))], clean_caption=False, **kw)
    return np.asarray(out.images)


def processor_names(pipe):
    return {name: type(p).__name__ for name, p in pipe.transformer.attn_processors.items()}


def generate_watching(pipe, seen: dict, raise_at: int | None = None, **kw):
    """generate() while a transformer hook (after the capture's) notes the processors of each call, and
    raises at call ``raise_at`` (PixArt's pipeline has no callback_on_step_end)."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(1)
        seen.update(processor_names(pipe))
        if raise_at is not None and len(calls) > raise_at:
            raise RuntimeError("interrupted")

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return generate(pipe, **kw)
    finally:
        handle.remove()


def test_tiny_pipelines_load_from_disk_and_generate_deterministically(saved):
    family, folder, pipe = saved
    assert type(pipe).__name__ == {"pixart": "PixArtSigmaPipeline", "sana": "SanaPipeline"}[family]
    kinds = {name.split(".")[-2]: proc for name, proc in processor_names(pipe).items()}
    assert kinds == {"pixart": {"attn1": "AttnProcessor2_0", "attn2": "AttnProcessor2_0"},
                     "sana": {"attn1": "SanaLinearAttnProcessor2_0", "attn2": "SanaAttnProcessor2_0"}}[family]
    from dmutils.config import ModelParams
    from dmutils.pipeline import load_pipeline

    assert type(load_pipeline(ModelParams(path=str(folder), family="auto", device="cpu"))) is type(pipe)
    first = generate(pipe, output_type="np")
    assert first.shape == (2, 64, 64, 3) and first.std() > 0
    np.testing.assert_array_equal(first, generate(load(folder), output_type="np"))


def test_family_and_layer_table(saved):
    family, _, pipe = saved
    assert family_for(pipe) is ADAPTER[family]
    with capture(pipe, SPEC) as rec:
        layers = rec.adapter.attention_layers()
        assert [(layer.level, layer.kind) for layer in layers] == [(i, k) for i in range(4) for k in ("self", "cross")]
        assert [layer.depth for layer in layers[::2]] == [0.125, 0.375, 0.625, 0.875]
        assert rec.layers == layers  # all blocks by default


def test_capture_leaves_images_unchanged_and_restores_processors(saved):
    family, _, pipe = saved
    before = processor_names(pipe)
    plain = generate(pipe, output_type="np")
    seen = {}
    with capture(pipe, SPEC) as rec:
        images = generate_watching(pipe, seen, output_type="np")
    np.testing.assert_allclose(images, plain, atol=1e-5)
    assert processor_names(pipe) == before
    recorder = {"pixart": {"attn1": "CaptureAttnProcessor", "attn2": "CaptureAttnProcessor"},
                "sana": {"attn1": "LinearAttentionRecorder", "attn2": "SoftmaxCrossAttentionRecorder"}}[family]
    assert {name: proc for name, proc in seen.items()} == {name: recorder[name.split(".")[-2]] for name in before}
    assert rec.state.steps_recorded == [0, 1]

    with pytest.raises(RuntimeError, match="interrupted"):
        with capture(pipe, SPEC):
            generate_watching(pipe, {}, raise_at=1)
    assert processor_names(pipe) == before


def test_cross_maps_are_probabilities_over_the_text_tokens(saved):
    family, _, pipe = saved
    with capture(pipe, SPEC) as rec:
        generate(pipe)
    maps = rec.maps(PROMPTS)
    cross = maps.cross(1, GRID)
    assert cross.shape == (300, GRID, GRID)  # max_sequence_length tokens, the patch grid
    torch.testing.assert_close(cross.sum(0), torch.ones(GRID, GRID))
    used = sum(pipe.tokenizer(PROMPTS[1]).attention_mask)  # the text and its specials; the padding is masked out
    assert used < 12 and cross[used:].max() < 1e-6 and cross[:used].sum(0).min() > 0.999
    rows = maps.self_attention(0, GRID).sum(-1)
    torch.testing.assert_close(rows, torch.ones(GRID * GRID), atol=1e-4, rtol=0)  # softmax rows; SANA: linear weights
    assert maps.words(1) == ["an", "aeroplane", "and", "a", "potted", "plant"]
    tok = pipe.tokenizer
    ids = tok(PROMPTS[1], padding="max_length", max_length=300, truncation=True).input_ids
    for word in ("aeroplane", "potted plant"):
        pos = maps.token_positions(1, word)
        assert tok.decode([ids[p] for p in pos]).replace("▁", " ").strip() == word
    assert maps.word_map(1, "potted plant", 64).shape == (64, 64)


def test_only_the_conditional_half_is_read(saved):
    """One step: the conditional half of a CFG batch sees what a batch without CFG sees."""
    family, _, pipe = saved
    with capture(pipe, SPEC) as rec:
        generate(pipe, steps=1, guidance=4.5)
    with_cfg = rec.maps()
    with capture(pipe, SPEC) as rec:
        generate(pipe, steps=1, guidance=1.0)
    without = rec.maps()
    torch.testing.assert_close(with_cfg.cross(0, GRID), without.cross(0, GRID), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(with_cfg.self_attention(1, GRID), without.self_attention(1, GRID), atol=1e-5, rtol=1e-4)
    assert len(with_cfg) == len(without) == 2


def test_chunked_equals_unchunked(saved, monkeypatch):
    family, _, pipe = saved
    with capture(pipe, SPEC) as rec:
        generate(pipe, steps=1)
    whole = rec.maps()
    monkeypatch.setattr(CaptureAttnProcessor, "max_chunk_bytes", 1)  # one head at a time
    monkeypatch.setattr(_SideRecorder, "max_chunk_bytes", 1)
    with capture(pipe, SPEC) as rec:
        generate(pipe, steps=1)
    torch.testing.assert_close(rec.maps().cross(1, GRID), whole.cross(1, GRID))
    torch.testing.assert_close(rec.maps().self_attention(0, GRID), whole.self_attention(0, GRID))


def test_blocks_by_index_and_by_depth(saved):
    family, _, pipe = saved
    seen = {}
    with capture(pipe, CaptureSpec(cross_resolutions=(GRID,), self_resolutions=(), transformer_blocks=(1,))) as rec:
        generate_watching(pipe, seen, steps=1)
    swapped = {n for n, proc in seen.items() if "Record" in proc or "Capture" in proc}
    assert swapped == {"transformer_blocks.1.attn2.processor"} and rec.maps().cross(0, GRID).shape[0] == 300
    with capture(pipe, CaptureSpec(cross_resolutions=(GRID,), self_resolutions=(), depth=(0.5, 1.0))) as rec:
        assert sorted({layer.level for layer in rec.layers}) == [2, 3]
    with pytest.raises(CaptureError, match=r"transformer_blocks \[7\] do not exist.*blocks 0-3"):
        capture(pipe, CaptureSpec(transformer_blocks=(7,)))
    with pytest.raises(CaptureError, match=r"resolution\(s\) \[32\] do not exist.*available: \[16\]"):
        with capture(pipe, CaptureSpec(cross_resolutions=(32,), self_resolutions=())):
            generate(pipe, steps=1)


def test_class_prompt_cross_attention_is_refused_in_one_line(saved):
    family, _, pipe = saved
    refused = f"not supported for the {family} family; set prompts.class_prompt to 'append' or 'none'"
    with pytest.raises(CaptureError, match=refused):
        with capture(pipe, SPEC, class_prompts=["man horse", "aeroplane"]):
            pass
    import dataclasses

    with pytest.raises(CaptureError, match=f"map_space 'output' .*which {family} has not"):
        with capture(pipe, dataclasses.replace(SPEC, map_space="output")):
            pass


def test_sana_linear_self_maps_are_the_weights_the_layer_mixes_values_with():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, kv_heads=2, bias=False, processor=SanaLinearAttnProcessor2_0())
    x = torch.randn(1, 12, 16)
    mixed_by_layer = []
    attn.to_out[0].register_forward_pre_hook(lambda m, args: mixed_by_layer.append(args[0]))
    attn(x)
    q, k, v = (f(x).view(1, 12, 2, 8).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    weights = LinearAttentionRecorder(None, 0, None).weights(q, k, None)
    assert weights.min() >= 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 12))
    mixed = torch.matmul(weights, v)  # (1, heads, queries, d)
    layer = mixed_by_layer[0].view(1, 12, 2, 8).transpose(1, 2)
    dead = (torch.relu(q) == 0).all(-1)  # queries with no positive feature: the layer outputs 0, the row goes to itself
    assert dead.sum() == 1  # this seed has one, in head 0
    torch.testing.assert_close(mixed[~dead], layer[~dead], atol=1e-5, rtol=1e-4)
    h, i = dead[0].nonzero()[0].tolist()
    assert weights[0, h, i].tolist() == [float(j == i) for j in range(12)] and layer[0, h, i].abs().max() == 0


def test_sana_cross_recorder_gives_the_probabilities_the_layer_uses():
    """With one head the recorded map is that head's softmax: probs @ values is what SanaAttnProcessor2_0
    computes (q/k RMS-normed across heads, padding masked as SanaTransformer2DModel masks it)."""
    from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0

    from dmutils.attention.adapters.dit import SoftmaxCrossAttentionRecorder
    from dmutils.attention.state import CaptureState

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=1, kv_heads=1, dim_head=16, qk_norm="rms_norm_across_heads",
                     bias=True, processor=SanaAttnProcessor2_0())
    x, ctx = torch.randn(4, 9, 16), torch.randn(4, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 4)
    bias = ((1 - mask) * -10000.0).unsqueeze(1).float()  # as SanaTransformer2DModel turns encoder_attention_mask into a bias
    mixed_by_layer = []
    attn.to_out[0].register_forward_pre_hook(lambda m, args: mixed_by_layer.append(args[0]))
    expected = attn(x, encoder_hidden_states=ctx, attention_mask=bias)
    state = CaptureState(recording=True, cond=slice(2, 4))  # a CFG batch: rows 2-3 are the conditional half
    attn.set_processor(SoftmaxCrossAttentionRecorder(state, 3, SanaAttnProcessor2_0()))
    torch.testing.assert_close(attn(x, encoder_hidden_states=ctx, attention_mask=bias), expected, rtol=0, atol=0)
    probs = state.sums[("cross", 3)]
    assert probs.shape == (2, 9, 5) and probs[..., 3:].max() < 1e-6
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 9))
    torch.testing.assert_close(probs @ attn.to_v(ctx[2:]), mixed_by_layer[0][2:], atol=1e-5, rtol=1e-4)


def test_sana_instruction_prefix_is_not_in_the_words(saved):
    """SANA encodes a long instruction before the prompt and keeps BOS + the last 299 embeddings."""
    family, _, pipe = saved
    if family != "sana":
        pytest.skip("SANA only")
    with capture(pipe, SPEC) as rec:
        generate(pipe, steps=1)  # the default complex_human_instruction
    assert rec.prompt_ids.shape[1] > 300
    maps = rec.maps(PROMPTS)
    assert maps.words(0) == ["a", "man", "riding", "a", "horse"] and maps.token_positions(0, "man") == [2]
    with capture(pipe, SPEC) as rec:
        generate(pipe, steps=1, complex_human_instruction=None)
    plain = rec.maps(PROMPTS)
    assert plain.words(0) == ["a", "man", "riding", "a", "horse"]
    ids_with = maps.token_ids[0].tolist()
    tok = pipe.tokenizer
    assert tok.decode([ids_with[p] for p in maps.token_positions(0, "riding")]).strip() == "riding"


def test_dmutils_generate_end_to_end(saved, tmp_path):
    from dmutils.commands import main

    family, folder, _ = saved
    raw = {"model": {"path": str(folder), "family": family, "num_inference_steps": 2, "device": "cpu", "height": 64, "width": 64,
                     "guidance_scale": 4.5},
           "capture": {"cross_resolutions": [GRID], "self_resolutions": [GRID], "transformer_blocks": [1, 2]},
           "masks": {"threshold": 0.4},
           "dataset": {"out_dir": str(tmp_path / "out"), "num_samples": 2, "batch_size": 2, "workers": 0, "min_area": 0.0}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    assert main(["generate", str(params), "--no-progress"]) == 0
    lines = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2
    import json

    records = [json.loads(line) for line in lines]
    assert all(r["status"] == "ok" for r in records), records
    labels = voc.read_label(tmp_path / "out" / voc.LABELS / f"{records[0]['id']}.png")
    assert labels.shape == (64, 64)


def test_capture_bench_reports_flat_state_bytes():
    """The benchmark's figures on the tiny pipeline (its timing is printed by the benchmark, not tested)."""
    from dmutils.benchmarks import capture_dit
    from dmutils.testing.dits import tiny_pixart_sigma_pipeline

    out = capture_dit.measure("pixart", tiny_pixart_sigma_pipeline(), pairs=1)
    assert out["grid_pixart"] == GRID and out["captured_blocks_pixart"] == [1, 2]  # the middle third of 4 blocks
    assert out["state_bytes_pixart_1"] == out["state_bytes_pixart_3"] == 4 * (GRID**2 * 300 + GRID**4)  # float32 cross + self
    assert out["ratio_pixart_512"] > 0 and out["ratio_pixart_512_steps"] > 0 and out["ratio_pixart_512_repeats"] == 1
