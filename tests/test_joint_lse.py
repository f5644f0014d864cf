"""The joint slice from the layer's own logsumexp: equal to the explicit joint softmax, and the output unchanged."""
import pytest
import torch
import torch.nn.functional as F

from dmutils.attention import joint
from dmutils.attention.state import CaptureState


def _qkv(dtype, seq=40, heads=3, d=16, batch=2):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, heads, seq, d, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("image,text", [(slice(0, 25), slice(25, 40)), (slice(15, 40), slice(0, 15))])  # SD3, FLUX order
def test_lse_slice_equals_the_explicit_joint_softmax_and_output_is_sdpa(dtype, image, text):
    q, k, v = _qkv(dtype)
    assert joint._has_lse_kernel(q, k, v, None)  # plain SDPA runs the CPU flash kernel here
    state = CaptureState()
    out = joint.attend_and_record(state, ("cross",), 5, q, k, v, image, text, joint_norm="joint_slice")
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))  # bit for bit
    scores = (q[:, :, image] * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    ref = scores.float().softmax(-1)[..., text].mean(1)
    got = state.sums["cross", 5]
    tol = 1e-5 if dtype == torch.float32 else 2e-3  # bf16: the kernel's normaliser from unrounded float32 scores
    torch.testing.assert_close(got, ref, atol=tol, rtol=0)


def test_masked_or_unflashable_falls_back():
    q, k, v = _qkv(torch.float32)
    mask = torch.ones(40, 40, dtype=torch.bool)
    assert not joint._has_lse_kernel(q, k, v, mask)
    assert not joint._has_lse_kernel(q.double(), k.double(), v.double(), None)
    a, b = CaptureState(), CaptureState()
    joint.attend_and_record(a, ("cross",), 5, q, k, v, slice(0, 25), slice(25, 40), attn_mask=mask)
    joint.attend_and_record(b, ("cross",), 5, q, k, v, slice(0, 25), slice(25, 40))
    torch.testing.assert_close(next(iter(a.sums.values())), next(iter(b.sums.values())), atol=1e-6, rtol=0)
