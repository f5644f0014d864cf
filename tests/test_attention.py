"""Attention capture on a tiny random SD 1.5-shaped pipeline (32 px images, 16x16 latent: maps 16/8/4/2)."""
import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from dmutils.attention import (
    CaptureSpec,
    WordLookupError,
    append_class_prompt,
    build_prompts,
    capture,
)
from dmutils.testing.sd import tiny_sd15_pipeline

PROMPTS = ["a man riding a horse; person horse", "an aeroplane and a potted plant near a tv monitor"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd15_pipeline(seed=0)


def generate(pipe, prompts=PROMPTS, seeds=(0, 1), steps=3, **kw):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(list(prompts), generator=gens, num_inference_steps=steps, guidance_scale=7.5, output_type="np", **kw).images


class ReferenceProcessor:
    """Plain explicit softmax attention (diffusers' AttnProcessor) that keeps every conditional map."""

    def __init__(self, log, clock):
        self.log, self.clock, self.inner = log, clock, AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k = attn.head_to_batch_dim(attn.to_q(hidden_states)), attn.head_to_batch_dim(attn.to_k(context))
        probs = attn.get_attention_scores(q, k)  # (batch * heads, queries, keys)
        probs = probs.view(-1, attn.heads, *probs.shape[1:])
        cond = probs[probs.shape[0] // 2:].mean(1)
        kind = "self" if encoder_hidden_states is None else "cross"
        self.log.append((self.clock[0], kind, math.isqrt(hidden_states.shape[1]), cond))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_cross_attention_rows_sum_to_one_over_tokens(pipe):
    with capture(pipe, CaptureSpec(cross_resolutions=(16, 8, 4), self_resolutions=(8,))) as rec:
        generate(pipe)
    maps = rec.maps()
    assert maps.cross_resolutions == [16, 8, 4]
    for i in range(2):
        for r in (16, 8, 4):
            m = maps.cross(i, r)
            assert m.shape == (77, r, r)
            torch.testing.assert_close(m.sum(0), torch.ones(r, r))
        torch.testing.assert_close(maps.self_attention(i, 8).sum(-1), torch.ones(64))
        torch.testing.assert_close(maps.aggregate(i, 32).sum(0), torch.ones(32, 32))


def test_maps_equal_explicit_softmax_reference_and_images_are_unchanged(pipe):
    spec = CaptureSpec(cross_resolutions=(8,), self_resolutions=(16,), timestep_window=(0.0, 0.5))
    plain = generate(pipe, steps=4)
    with capture(pipe, spec) as rec:
        captured = generate(pipe, steps=4)
    maps = rec.maps()
    assert maps.steps == [0, 1]
    np.testing.assert_allclose(captured, plain, atol=1e-4)

    log, clock = [], [0]
    originals = dict(pipe.unet.attn_processors)

    def tick(p, step, t, kwargs):
        clock[0] = step + 1
        return kwargs

    pipe.unet.set_attn_processor(ReferenceProcessor(log, clock))
    try:
        reference_images = generate(pipe, steps=4, callback_on_step_end=tick)
    finally:
        pipe.unet.set_attn_processor(originals)
    np.testing.assert_allclose(captured, reference_images, atol=1e-4)

    for kind, res in (("cross", 8), ("self", 16)):
        picked = [m for step, k, r, m in log if k == kind and r == res and step in (0, 1)]
        assert picked, f"reference recorded no {kind}@{res}"
        expected = torch.stack(picked).mean(0)  # (N, queries, keys)
        for i in range(2):
            got = maps.cross(i, res).flatten(1).T if kind == "cross" else maps.self_attention(i, res)
            torch.testing.assert_close(got, expected[i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head_reduce", ["mean", "max"])
def test_heads_in_chunks_give_the_same_maps_and_images(pipe, monkeypatch, head_reduce):
    from dmutils.attention.processors import CaptureAttnProcessor

    spec = CaptureSpec(cross_resolutions=(16,), self_resolutions=(16,), head_reduce=head_reduce)
    with capture(pipe, spec) as rec:
        whole = generate(pipe, steps=2)
    expected = rec.maps()
    # 16x16 self-attention of 2 samples: 2 * 256 * 256 * 4 bytes per head; allow one head at a time
    monkeypatch.setattr(CaptureAttnProcessor, "max_chunk_bytes", 2 * 256 * 256 * 4)
    with capture(pipe, spec) as rec:
        chunked = generate(pipe, steps=2)
    got = rec.maps()
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    for i in range(2):
        torch.testing.assert_close(got.self_attention(i, 16), expected.self_attention(i, 16), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.cross(i, 16), expected.cross(i, 16), atol=1e-6, rtol=1e-5)


def test_batch_maps_are_per_sample(pipe):
    with capture(pipe, CaptureSpec(cross_resolutions=(8,), self_resolutions=())) as rec:
        generate(pipe, PROMPTS, seeds=(0, 1), steps=2)
    batch = rec.maps()
    with capture(pipe, CaptureSpec(cross_resolutions=(8,), self_resolutions=())) as rec:
        generate(pipe, PROMPTS[1:], seeds=(1,), steps=2)
    single = rec.maps()
    assert len(batch) == 2 and len(single) == 1
    torch.testing.assert_close(batch.cross(1, 8), single.cross(0, 8), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batch.cross(0, 8), batch.cross(1, 8))


def test_processors_and_hooks_restored_after_an_exception(pipe):
    before = dict(pipe.unet.attn_processors)

    def boom(p, step, t, kwargs):
        if step == 1:
            raise RuntimeError("stop mid-generation")
        return kwargs

    with pytest.raises(RuntimeError, match="stop mid-generation"):
        with capture(pipe, CaptureSpec(cross_resolutions=(16, 8), self_resolutions=(16,))) as rec:
            during = dict(pipe.unet.attn_processors)
            generate(pipe, steps=3, callback_on_step_end=boom)
    assert rec.state.steps_recorded == [0, 1]
    after = dict(pipe.unet.attn_processors)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert during == before  # processors are only swapped once a generation starts
    assert not pipe.unet._forward_pre_hooks and not pipe.text_encoder._forward_pre_hooks


def test_uncaptured_layers_keep_their_processor(pipe):
    seen = {}

    def look(p, step, t, kwargs):
        seen.update(p.unet.attn_processors)
        return kwargs

    with capture(pipe, CaptureSpec(cross_resolutions=(8,), self_resolutions=(), blocks=("up",))):
        generate(pipe, steps=1, callback_on_step_end=look)
    swapped = sorted(name for name, proc in seen.items() if type(proc).__name__ == "CaptureAttnProcessor")
    # up_blocks.2 runs at level 1 (8x8 here); SD 1.5 has 3 transformer layers there
    assert swapped == [f"up_blocks.2.attentions.{j}.transformer_blocks.0.attn2.processor" for j in range(3)]


def test_multi_token_words_and_reduction(pipe):
    with capture(pipe, CaptureSpec(cross_resolutions=(16, 8), self_resolutions=())) as rec:
        generate(pipe, steps=2)
    maps = rec.maps()
    tok = pipe.tokenizer
    assert maps.words(1) == ["an", "aeroplane", "and", "a", "potted", "plant", "near", "a", "tv", "monitor"]
    n_aero = len(tok.tokenize("aeroplane"))
    assert n_aero > 1
    pos = maps.token_positions(1, "aeroplane")
    assert pos == list(range(2, 2 + n_aero))
    agg = maps.aggregate(1, 32)
    torch.testing.assert_close(maps.word_map(1, "aeroplane", 32), agg[pos].mean(0))
    torch.testing.assert_close(maps.word_map(1, "aeroplane", 32, reduce="max"), agg[pos].amax(0))
    plant = maps.token_positions(1, "potted plant")
    assert len(plant) == len(tok.tokenize("potted plant")) > 2
    assert len(maps.token_positions(1, "tv monitor")) == len(tok.tokenize("tv monitor"))
    cm = maps.class_maps(1, {"aeroplane": "aeroplane", "pottedplant": "potted plant"}, size=32)
    assert cm.shape == (2, 32, 32)
    torch.testing.assert_close(cm[1], agg[plant].mean(0))
    # a word repeated: "horse" is in the caption and in the appended class prompt
    assert len(maps.token_positions(0, "horse")) == 2
    assert maps.token_positions(0, "horse", occurrence="last") == [8]
    with pytest.raises(WordLookupError, match=r"'dog' is not in the prompt of sample 0.*\['a', 'man', 'riding'"):
        maps.word_map(0, "dog")
    with pytest.raises(WordLookupError, match="not in the prompt"):
        maps.word_map(0, "plant")  # not a word of sample 0 (sample 1 has it)
    with pytest.raises(KeyError, match=r"captured: \[16, 8\]"):
        maps.cross(0, 4)


def test_truncation_is_reported_and_lost_class_is_an_error(pipe):
    long = "a photo of a " + " ".join(["red circle"] * 40) + " and a dog"
    prompts = [long, "a dog"]
    with capture(pipe, CaptureSpec(cross_resolutions=(8,), self_resolutions=())) as rec:
        generate(pipe, prompts, steps=1)
    exact = rec.maps(prompts=prompts)
    assert exact.truncated(0) and not exact.truncated(1)
    assert exact.word_map(1, "dog").shape == (8, 8)
    assert exact.word_map(0, "circle").shape == (8, 8)  # the kept occurrences only
    assert max(exact.token_positions(0, "circle")) < 76
    with pytest.raises(WordLookupError, match="'dog' of sample 0 was cut off"):
        exact.word_map(0, "dog")
    from_ids = rec.maps()  # no texts: the ids the text encoder saw
    assert from_ids.truncated(0) and not from_ids.truncated(1)
    assert from_ids.words(0)[:4] == ["a", "photo", "of", "a"] and from_ids.words(1) == ["a", "dog"]
    with pytest.raises(WordLookupError, match="may have been cut off"):
        from_ids.word_map(0, "dog")


def test_state_memory_is_flat_in_steps(pipe):
    spec = CaptureSpec(cross_resolutions=(16, 8), self_resolutions=(16,))
    sizes = {}
    for steps in (2, 6):
        with capture(pipe, spec) as rec:
            generate(pipe, steps=steps)
        sizes[steps] = (rec.nbytes, rec.state.peak_bytes, len(rec.state.steps_recorded))
    assert sizes[2][2] == 2 and sizes[6][2] == 6
    assert sizes[2][:2] == sizes[6][:2]
    assert sizes[2][0] == 2 * 4 * (256 * 77 + 64 * 77 + 256 * 256)  # N * float32 * (cross16 + cross8 + self16)


def test_class_prompt_cross_attention_leaves_the_image_unchanged(pipe):
    captions = ["a man riding a horse", "a cat on a table"]
    prompts, class_prompts = build_prompts(captions, [["person", "horse"], ["cat", "dining table"]], "cross_attention")
    assert prompts == captions and class_prompts == ["person horse", "cat dining table"]
    plain = generate(pipe, prompts, steps=2)
    with capture(pipe, CaptureSpec(cross_resolutions=(8,), self_resolutions=(8,)), class_prompts=class_prompts) as rec:
        images = generate(pipe, prompts, steps=2)
    np.testing.assert_allclose(images, plain, atol=1e-4)
    maps = rec.maps()
    assert maps.words(0) == ["person", "horse"] and maps.words(1) == ["cat", "dining", "table"]
    assert maps.class_maps(1, {"cat": "cat", "diningtable": "dining table"}, 16).shape == (2, 16, 16)
    torch.testing.assert_close(maps.cross(0, 8).sum(0), torch.ones(8, 8))
    with capture(pipe, CaptureSpec(cross_resolutions=(8,), self_resolutions=())) as rec:
        generate(pipe, prompts, steps=2)
    assert not torch.allclose(rec.maps().cross(0, 8), maps.cross(0, 8))  # keys of the class prompt, not the caption


def test_append_class_prompt():
    assert append_class_prompt("a man riding a horse", ["person", "horse"]) == "a man riding a horse; person horse"
    prompts, class_prompts = build_prompts(["a dog", "a cat"], [["dog"], ["cat", "cat"]], "append")
    assert prompts == ["a dog; dog", "a cat; cat"] and class_prompts is None
    with pytest.raises(ValueError, match="one list per caption"):
        build_prompts(["a dog"], [], "append")


def test_bad_requests_fail_before_the_unet_runs(pipe):
    calls = []
    hook = pipe.unet.conv_in.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"resolution\(s\) \[32\] do not exist.*available: \[16, 8, 4, 2\]"):
            with capture(pipe, CaptureSpec(cross_resolutions=(32,), self_resolutions=())):
                generate(pipe, steps=1)
        with pytest.raises(ValueError, match="holds none of the 2 steps"):
            with capture(pipe, CaptureSpec(cross_resolutions=(8,), self_resolutions=(), timestep_window=(0.8, 0.9))):
                generate(pipe, steps=2)
        with pytest.raises(ValueError, match="one class prompt per prompt"):
            with capture(pipe, CaptureSpec(cross_resolutions=(8,), self_resolutions=()), class_prompts=["a", "b", "c"]):
                generate(pipe, steps=1)
    finally:
        hook.remove()
    assert calls == []
    with pytest.raises(ValueError, match="class_prompts must be a non-empty list"):
        capture(pipe, class_prompts="person horse")
    with pytest.raises(ValueError, match="captures nothing"):
        CaptureSpec(cross_resolutions=(), self_resolutions=())
    with pytest.raises(ValueError, match="timestep_window"):
        CaptureSpec(timestep_window=(0.5, 0.2))
    with pytest.raises(RuntimeError, match="nothing was captured"):
        with capture(pipe) as rec:
            pass
        rec.maps()
