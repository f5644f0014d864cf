"""Capture from the families that came with the descriptors (FLUX.2 [klein] and [dev], Qwen-Image, Chroma, CogView4,
Lumina 2, HiDream, Z-Image, HunyuanImage 2.1): tiny random-weight pipelines saved with save_pretrained and loaded with
from_pretrained, read by the one joint-attention adapter."""
import json
import sys

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from dmutils.attention import CaptureSpec, capture, joint
from dmutils.attention.adapters import family_for
from dmutils.attention.adapters.families import (
    CHROMA,
    COGVIEW4,
    FLUX2,
    HIDREAM,
    HUNYUAN_IMAGE,
    LUMINA2,
    QWEN_IMAGE,
    ZIMAGE,
)
from dmutils.testing.families import (
    save_tiny_chroma,
    save_tiny_cogview4,
    save_tiny_flux2_dev,
    save_tiny_flux2_klein,
    save_tiny_hidream,
    save_tiny_hunyuanimage,
    save_tiny_lumina2,
    save_tiny_qwen_image,
    save_tiny_zimage,
)

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a dog on the grass", "an aeroplane in the sky"]
GRID = 8  # 32 px image, VAE factor 2, 2x2 packing
NEGATIVE = ["blurry"] * 2
CASES = {  # saver, descriptor, generation settings (a second, negative call per step: true CFG, not read)
    "flux2-klein": (save_tiny_flux2_klein, FLUX2, {"guidance_scale": 4.0, "max_sequence_length": 24}),
    "flux2-dev": (save_tiny_flux2_dev, FLUX2, {"guidance_scale": 4.0, "max_sequence_length": 128}),  # guidance-distilled
    "qwenimage": (save_tiny_qwen_image, QWEN_IMAGE, {"true_cfg_scale": 4.0, "negative_prompt": NEGATIVE}),
    "chroma": (save_tiny_chroma, CHROMA, {"guidance_scale": 4.0, "negative_prompt": NEGATIVE, "max_sequence_length": 24}),
    "cogview4": (save_tiny_cogview4, COGVIEW4, {"guidance_scale": 4.0, "negative_prompt": NEGATIVE}),
    "lumina2": (save_tiny_lumina2, LUMINA2, {"guidance_scale": 4.0, "negative_prompt": NEGATIVE}),
    "hidream": (save_tiny_hidream, HIDREAM, {"guidance_scale": 4.0, "negative_prompt": NEGATIVE}),  # a CFG batch
    "zimage": (save_tiny_zimage, ZIMAGE, {"guidance_scale": 4.0, "negative_prompt": NEGATIVE}),  # [conditional, unconditional]
    "hunyuanimage": (save_tiny_hunyuanimage, HUNYUAN_IMAGE, {"negative_prompt": NEGATIVE}),  # its guider: a call per condition
}
COND = {"hidream": slice(2, 4)}  # the conditional rows of the denoiser batch
SIZE = {"Lumina2Pipeline": 128}  # px for the 8x8 grid: Lumina 2 fixes its VAE factor at 8
LAYERS = {"flux2-klein": 3, "flux2-dev": 3, "qwenimage": 2, "chroma": 3, "cogview4": 2, "lumina2": 2, "hidream": 2, "zimage": 2, "hunyuanimage": 2}  # Klein, Chroma: 1 dual + 2 single blocks
ATTN = {"cogview4": "attn1", "hidream": "block.attn1", "zimage": "attention"}  # the joint attention's attribute in a block, "attn" elsewhere


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    save, desc, kw = CASES[request.param]
    folder = save(tmp_path_factory.mktemp(request.param) / "model")
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if request.param == "hidream":
        pipe.default_sample_size = HIDREAM_SAMPLE
    return request.param, folder, pipe, desc, kw


HIDREAM_SAMPLE = 16  # HiDream scales every request to the area of default_sample_size latents (128, fixed): 32 px here


@pytest.fixture
def small_hidream(monkeypatch):
    """HiDream pipelines as loaded by ``dmutils generate``, with the small default_sample_size."""
    import functools

    from diffusers import HiDreamImagePipeline

    init = HiDreamImagePipeline.__init__

    @functools.wraps(init)
    def small(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.default_sample_size = HIDREAM_SAMPLE

    monkeypatch.setattr(HiDreamImagePipeline, "__init__", small)


def generate(pipe, kw, steps=2, **extra):
    gens = [torch.Generator().manual_seed(s) for s in range(len(PROMPTS))]
    size = SIZE.get(type(pipe).__name__, 32)
    kw = {"height": size, "width": size, **{k: list(v) if isinstance(v, list) else v for k, v in kw.items()}}  # Z-Image rewrites prompt lists in place
    return pipe(prompt=list(PROMPTS), generator=gens, num_inference_steps=steps, output_type="np", **kw, **extra).images


def processors(pipe) -> dict:
    """Every attention module's processor (CogView4's transformer has no ``attn_processors``)."""
    return {name: m.processor for name, m in pipe.transformer.named_modules() if hasattr(m, "set_processor")}


def spec(**kw):
    return CaptureSpec(**{"cross_resolutions": (GRID,), "self_resolutions": (GRID,), **kw})


def test_images_unchanged_processors_restored_also_on_error(case):
    name, _, pipe, desc, kw = case
    assert family_for(pipe) is desc
    before = processors(pipe)
    plain = generate(pipe, kw)
    with capture(pipe, spec()) as rec:
        images = generate(pipe, kw)
    np.testing.assert_array_equal(images, plain)  # the layer's own processor and kernel: bit for bit
    assert processors(pipe) == before
    layers = LAYERS[name]
    assert rec.state.counts == {("cross", GRID): 2 * layers, ("self", GRID): 2 * layers}  # 2 steps, the negative calls skipped
    assert rec.state.cond == COND.get(name, slice(0, 2)) and rec.state.steps_recorded == [0, 1]

    def stop(*args, **kwargs):
        attn = pipe.transformer.get_submodule(f"{desc.blocks[0].attr}.0.{ATTN.get(name, 'attn')}")
        assert type(attn.processor).__name__ == "JointCaptureProcessor"
        raise RuntimeError("stop mid-generation")

    with pytest.raises(RuntimeError, match="stop mid-generation"), capture(pipe, spec()):
        generate(pipe, kw, callback_on_step_end=stop)
    assert processors(pipe) == before


def _attention_inputs(pipe, kw, layer: str):
    """The query, key and mask (batch, heads, seq, d) one layer's processor attends with at the first step: its
    attention call (diffusers' dispatch_attention_fn or torch's SDPA, whichever its module calls), watched."""
    attn = pipe.transformer.get_submodule(layer)
    module = sys.modules[type(attn.processor).__module__]
    owner, name = (module, "dispatch_attention_fn") if "dispatch_attention_fn" in vars(module) else \
        (torch.nn.functional, "scaled_dot_product_attention")
    real, seen = getattr(owner, name), []

    def watch(q, k, v, attn_mask=None, **rest):
        seen.append((q, k, attn_mask) if owner is torch.nn.functional else (q.transpose(1, 2), k.transpose(1, 2), attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **rest)

    hook = attn.register_forward_pre_hook(lambda *a: setattr(owner, name, watch))
    after = attn.register_forward_hook(lambda *a: setattr(owner, name, real))
    try:
        generate(pipe, kw, steps=1)
    finally:
        hook.remove(), after.remove()
        setattr(owner, name, real)
    return seen[0]  # the positive call (the negative one comes second; HiDream's CFG batch has both)


def _sample_layout(name: str, seq: int, keys: int) -> tuple[slice, slice]:
    """(text, image) positions of one sample's joint sequence of ``seq`` keys, ``keys`` of them unmasked, as the
    family's transformer lays them out (written here, not read from the descriptor under test)."""
    n = GRID * GRID
    if name == "lumina2":  # each sample packs [its own text, image, padding]
        return slice(0, keys - n), slice(keys - n, keys)
    if name == "hidream":  # [image, T5 128, Llama (last layer) 128, Llama (this block's layer) 128]: the Llama part
        return slice(n + 128, n + 256), slice(0, n)
    if name == "hunyuanimage":  # [image, text]: each sample's valid tokens first, its padding masked
        return slice(n, seq), slice(0, n)
    if name == "zimage":  # [image padded to a multiple of 32, text padded to a multiple of 32, padding]
        return slice(-(-n // 32) * 32, seq), slice(0, n)
    return slice(0, seq - n), slice(seq - n, seq)  # text first


@pytest.mark.parametrize("joint_norm", ["text_softmax", "joint_slice"])
def test_maps_equal_the_joint_softmax_computed_directly(case, joint_norm):
    name, _, pipe, desc, kw = case
    layer = f"{desc.blocks[0].attr}.0.{ATTN.get(name, 'attn')}"
    q, k, mask = _attention_inputs(pipe, kw, layer)
    seq = k.shape[2]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5  # (batch, heads, seq, seq)
    if mask is not None and mask.dtype == torch.bool:  # Qwen-Image, Lumina 2, Z-Image: padding masked out
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:  # Chroma: its 0/1 padding mask reaches SDPA as floats, which add to the scores
        scores = scores + mask
    rows = range(q.shape[0])[COND.get(name, slice(0, 2))]
    keys = [seq if mask is None else int(mask[b].reshape(-1, seq)[-1].sum()) for b in range(q.shape[0])]
    with capture(pipe, spec(transformer_blocks=(0,), joint_norm=joint_norm)) as rec:
        generate(pipe, kw, steps=1)
        assert [layer.name for layer in rec.layers] == [layer]
    maps = rec.maps()
    got = torch.stack([maps.cross(i, GRID) for i in range(2)]).flatten(2).transpose(1, 2)  # (N, pixels, text)
    cross_ref, self_ref = [], []
    for b in rows:
        text, image = _sample_layout(name, seq, keys[b])
        s = scores[b, :, image]
        probs = s.softmax(-1)
        cross = s[..., text].softmax(-1) if joint_norm == "text_softmax" else probs[..., text]
        cross_ref.append(torch.nn.functional.pad(cross.mean(0), (0, got.shape[-1] - cross.shape[-1])))  # Lumina 2: to the text keys
        self_ref.append((probs[..., image] / probs[..., image].sum(-1, keepdim=True)).mean(0))
    torch.testing.assert_close(got, torch.stack(cross_ref), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.stack([maps.self_attention(i, GRID) for i in range(2)]), torch.stack(self_ref), atol=1e-5,
                               rtol=1e-4)
    sums = got.sum(-1)
    if joint_norm == "text_softmax":
        torch.testing.assert_close(sums, torch.ones_like(sums))
    else:
        assert bool((sums > 0).all() and (sums < 1).all())
    rows = maps.self_attention(0, GRID).sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))



@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_capture_under_a_chosen_attention_backend(case, backend):
    """``transformer.set_attention_backend(...)``: the processors that call dispatch_attention_fn pass it the backend;
    capture keeps it for the output and records beside it, so images are unchanged and the maps are those of the
    default backend (SDPA families ignore the choice)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    _, _, pipe, _, kw = case
    with capture(pipe, spec()) as rec:
        generate(pipe, kw)
    default = rec.maps()
    active = _AttentionBackendRegistry.get_active_backend()[0]
    pipe.transformer.set_attention_backend(backend)
    try:
        plain = generate(pipe, kw)
        with capture(pipe, spec()) as rec:
            images = generate(pipe, kw)
    finally:
        pipe.transformer.reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(active)  # set_attention_backend also sets it for every model
    np.testing.assert_array_equal(images, plain)
    torch.testing.assert_close(rec.maps().cross(1, GRID), default.cross(1, GRID), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rec.maps().self_attention(1, GRID), default.self_attention(1, GRID), atol=1e-5, rtol=1e-4)


def test_flux_attention_drops_unexpected_kwargs_as_without_capture(caplog):
    """``FluxAttention.forward`` passes a processor only the keyword arguments its ``__call__`` names (Chroma shares
    FLUX.1's attention): under capture the same are dropped, with the same warning, and the images do not change."""
    from dmutils.testing.families import tiny_chroma_pipeline

    pipe = tiny_chroma_pipeline()
    kw = {"guidance_scale": 1.0, "max_sequence_length": 24, "joint_attention_kwargs": {"not_an_argument": 1}}
    plain = generate(pipe, kw)
    with capture(pipe, spec()) as rec:
        images = generate(pipe, kw)
    np.testing.assert_array_equal(images, plain)
    assert rec.state.counts[("cross", GRID)] == 2 * 3
    assert "not_an_argument" in caplog.text and "will be ignored" in caplog.text


def test_zimage_text_after_the_padded_image_tokens():
    """Z-Image pads the image tokens to a multiple of 32 before the text: at 24 px (a 6x6 grid, 36 tokens, padded to
    64) the text keys start at 64, and the maps are the softmax over them computed directly."""
    from dmutils.testing.families import tiny_zimage_pipeline

    pipe, kw = tiny_zimage_pipeline(), {**CASES["zimage"][2], "height": 24, "width": 24}
    q, k, mask = _attention_inputs(pipe, kw, "layers.0.attention")
    scores = (q[:2, :, :36] @ k[:2, :, 64:].transpose(-1, -2)) / q.shape[-1] ** 0.5  # image queries, text keys
    if mask is not None:
        scores = scores.masked_fill(~mask[:2, ..., 64:], float("-inf"))
    with capture(pipe, spec(cross_resolutions=(6,), self_resolutions=(), transformer_blocks=(0,), joint_norm="text_softmax")) as rec:
        generate(pipe, kw, steps=1)
    got = torch.stack([rec.maps().cross(i, 6) for i in range(2)]).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, scores.softmax(-1).mean(1), atol=1e-5, rtol=1e-4)


def test_chunked_heads_equal_unchunked(case, monkeypatch):
    _, _, pipe, _, kw = case
    with capture(pipe, spec()) as rec:
        generate(pipe, kw)
    whole = rec.maps()
    monkeypatch.setattr(joint, "MAX_CHUNK_BYTES", 1)  # one head at a time
    with capture(pipe, spec()) as rec:
        generate(pipe, kw)
    torch.testing.assert_close(rec.maps().cross(1, GRID), whole.cross(1, GRID), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rec.maps().self_attention(1, GRID), whole.self_attention(1, GRID), atol=1e-6, rtol=1e-5)


def test_word_lookup_with_the_family_tokenizer(case):
    """Klein and Qwen-Image wrap the prompt in a chat template, CogView4 pads it on the left: the words come from the
    ids the transformer attends to."""
    name, _, pipe, _, kw = case
    with capture(pipe, spec(self_resolutions=())) as rec:
        generate(pipe, kw)
    maps = rec.maps(PROMPTS)
    tokenizer = getattr(pipe, "tokenizer_4" if name == "hidream" else "tokenizer")  # HiDream: the Llama part's
    assert rec.tokenizer is tokenizer
    words = [w for w in maps.words(1) if w.isalpha()]  # after a chat template's or a system prompt's own words
    assert any(words[k:k + 5] == ["an", "aeroplane", "in", "the", "sky"] for k in range(len(words)))
    ids = maps.token_ids[1].tolist()
    pos = maps.token_positions(1, "aeroplane")
    assert len(pos) == 2 and tokenizer.decode([ids[p] for p in pos]).strip() == "aeroplane"
    assert maps.word_map(0, "dog").shape == (GRID, GRID)


@pytest.mark.parametrize("preset", sorted(CASES))
def test_generate_end_to_end_with_the_preset(preset, tmp_path, small_hidream):
    """``dmutils generate params/voc_<family>.yaml`` on a saved tiny pipeline of the family."""
    from dmutils.commands import main
    from dmutils.paths import REPO_ROOT

    model = CASES[preset][0](tmp_path / "model")
    cls = json.loads((model / "model_index.json").read_text())["_class_name"]
    assert cls in CASES[preset][1].pipelines
    out, size = tmp_path / "data", SIZE.get(cls, 32)
    sets = [f"model.path={model}", "model.dtype=float32", "model.device=cpu", f"model.height={size}", f"model.width={size}",
            "model.num_inference_steps=2", f"capture.cross_resolutions=[{GRID}]", f"capture.self_resolutions=[{GRID}]",
            "capture.depth=[0.0,1.0]", "dataset.num_samples=2", "dataset.batch_size=2", "dataset.workers=0", "dataset.min_area=0",
            f"dataset.out_dir={out}"]  # every block: the tiny transformers have 2-3
    params = REPO_ROOT / f"params/voc_{preset.replace('-', '_')}.yaml"
    assert main(["generate", str(params), "--no-progress"] + [a for s in sets for a in ("--set", s)]) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    assert len(records) == 2 and ok, records
    with np.load(out / "maps" / f"{ok[0]['id']}.npz") as z:
        assert z[f"cross_{GRID}"].shape == (len(ok[0]["classes"]), GRID, GRID)
