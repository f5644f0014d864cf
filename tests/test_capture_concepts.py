"""Concept tokens through the text stream (class-prompt maps and ConceptAttention's output-space maps) on SD3 and FLUX.1."""
import numpy as np
import pytest
import torch

from dmutils.attention import CaptureSpec, capture
from dmutils.attention.adapters import CaptureError, JointAttentionAdapter
from dmutils.testing.dits import tiny_flux_pipeline, tiny_sd3_pipeline
from dmutils.testing.sd import tiny_sd15_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a dog on the grass", "an aeroplane in the sky"]
GRID, TEXT = 8, 16
FAMILIES = {
    "sd3": (lambda: tiny_sd3_pipeline(), JointAttentionAdapter, {"max_sequence_length": TEXT}),
    "flux": (lambda: tiny_flux_pipeline(), JointAttentionAdapter,
             {"max_sequence_length": TEXT, "guidance_scale": 3.5, "height": 32, "width": 32}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    build, adapter, kw = FAMILIES[request.param]
    return request.param, build(), adapter, kw


def generate(pipe, kw, steps=2):
    gens = [torch.Generator().manual_seed(s) for s in range(len(PROMPTS))]
    return pipe(PROMPTS, generator=gens, num_inference_steps=steps, output_type="np", **kw).images


def spec(**kw):
    return CaptureSpec(**{"cross_resolutions": (GRID,), "self_resolutions": (GRID,), **kw})


@pytest.mark.parametrize("space", ["attention", "output"])
def test_concepts_leave_the_image_unchanged_and_maps_are_distributions(family, space):
    name, pipe, _, kw = family
    plain = generate(pipe, kw)
    before = dict(pipe.transformer.attn_processors)
    with capture(pipe, spec(map_space=space), class_prompts=["dog", "aeroplane sky"]) as rec:
        images = generate(pipe, kw)
    np.testing.assert_allclose(images, plain, atol=1e-5)
    assert dict(pipe.transformer.attn_processors) == before
    maps = rec.maps()
    sums = maps.cross(1, GRID).sum(0)  # over the concept tokens at every pixel
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert maps.words(1) == ["aeroplane", "sky"] and maps.word_map(1, "sky").shape == (GRID, GRID)
    # cross maps come from the blocks with a text stream only (FLUX.1: the 2 dual-stream ones), 2 steps
    assert rec.state.counts[("cross", GRID)] == 2 * (4 if name == "sd3" else 2)


def test_concepts_equal_to_the_caption_reproduce_its_text_stream(family, monkeypatch):
    """With the caption itself as the concepts (encoded alike), the concept stream is the text stream: the
    attention-space concept maps are the caption's own text_softmax maps (of the blocks with a text stream)."""
    name, pipe, adapter, kw = family
    with capture(pipe, spec(self_resolutions=(), flux_streams="dual", joint_norm="text_softmax")) as rec:
        generate(pipe, kw)
    caption = rec.maps().cross(1, GRID)

    def encode_like_the_caption(self, prompts):
        extra = {"prompt_3": None, "do_classifier_free_guidance": False} if name == "sd3" else {}
        return self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.denoiser.device, num_images_per_prompt=1,
                                       max_sequence_length=TEXT, **extra)[0]

    monkeypatch.setattr(adapter, "encode_class_prompts", encode_like_the_caption)
    with capture(pipe, spec(self_resolutions=()), class_prompts=PROMPTS) as rec:
        generate(pipe, kw)
    torch.testing.assert_close(rec.maps().cross(1, GRID), caption, atol=2e-5, rtol=1e-4)


def test_output_space_needs_concepts_and_a_transformer(family):
    _, pipe, _, _ = family
    with pytest.raises(CaptureError, match="map_space 'output' .* reads concept tokens: give class prompts"):
        capture(pipe, spec(map_space="output")).__enter__()
    with pytest.raises(CaptureError, match="needs a joint-attention transformer"):
        capture(tiny_sd15_pipeline(), CaptureSpec(cross_resolutions=(16,), self_resolutions=(), map_space="output"))
