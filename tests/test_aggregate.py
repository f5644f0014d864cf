"""capture.aggregate: auto weights layers and heads from the maps alone; the default mean costs and gives what it did."""
import numpy as np
import pytest
import torch

from dmutils.attention import CaptureSpec, capture
from dmutils.attention.aggregate import POWER, aggregate, auto_weights, combine, concentration
from dmutils.config import load_params
from dmutils.errors import ParamsError
from dmutils.testing.dits import tiny_sd3_pipeline
from dmutils.testing.sd import tiny_sd15_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a dog on the grass", "an aeroplane in the sky"]


def _softmax_rows(scores: torch.Tensor) -> torch.Tensor:
    return scores.softmax(-1)


def _maps(concentrated: bool, heads: int = 2, side: int = 8, keys: int = 5) -> torch.Tensor:
    """(heads, side*side, keys) rows over the keys; key 1's map a bright blob (concentrated) or flat."""
    scores = torch.zeros(heads, side * side, keys)
    if concentrated:  # key 1 attended to at 4 pixels, hardly anywhere else
        scores[..., 1] = -6.0
        scores.view(heads, side, side, keys)[:, 2:4, 2:4, 1] = 6.0
    return _softmax_rows(scores)


def test_concentration_orders_a_blob_above_a_flat_map():
    flat, blob = torch.ones(64), torch.zeros(64)
    blob[:4] = 1
    assert concentration(flat).item() == pytest.approx(0, abs=1e-6)
    assert concentration(blob).item() > 0.5


def test_auto_weights_favour_the_concentrated_layer_heads_and_sum_to_one():
    layers = {"uniform": _maps(False), "concentrated": _maps(True)}
    w = auto_weights(layers, focus=[1])
    assert set(w) == {"uniform", "concentrated"} and all(v.shape == (2,) for v in w.values())
    assert w["concentrated"].min() > 10 * w["uniform"].max()
    assert float(sum(v.sum() for v in w.values())) == pytest.approx(1, abs=1e-6)
    again = auto_weights({k: v.clone() for k, v in layers.items()}, focus=[1])
    assert all(torch.equal(w[k], again[k]) for k in w)  # deterministic
    assert combine(layers, w).shape == (64, 5)


def test_heads_with_one_budget_count_by_shape_a_joint_slice_by_its_mass():
    """Rows that are distributions over the text: a head giving the word half the mass counts as much as its
    neighbour (unit mass, power mean); rows that are not (a joint-attention slice) are combined linearly, mass kept."""
    heads = _maps(True)
    weak = heads.clone()
    weak[1] = heads[1] * 0.5
    weak[1, :, 0] += 1 - weak[1].sum(-1)  # the rest goes to the start token: rows still sum to 1
    word = aggregate({"layer": weak}, focus=[1])[0][:, 1]
    same = aggregate({"layer": heads}, focus=[1])[0][:, 1]
    torch.testing.assert_close(word / word.sum(), same / same.sum())  # the weak head's smaller mass does not count
    linear, w = aggregate({"layer": heads * 0.3}, focus=[1])  # rows sum to 0.3: not distributions
    assert torch.allclose(w["layer"], torch.full((2,), 0.5))
    torch.testing.assert_close(linear, (heads * 0.3).mean(0))


def test_the_power_mean_counts_where_many_heads_agree_over_where_one_is_strong():
    """Two heads put half their word's mass on pixel 0 (and half on pixel 2), a third all of it on pixel 1: the
    linear mean scores pixels 0 and 1 alike; with POWER < 1 the pixel two heads agree on scores higher."""
    heads = torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])[:, :, None]  # (heads, queries, one key)
    w = {"layer": torch.full((3,), 1 / 3)}
    linear, power = combine({"layer": heads}, w)[:, 0], combine({"layer": heads}, w, POWER)[:, 0]
    assert POWER < 1 and torch.isclose(linear[0], linear[1]) and power[0] > 1.5 * power[1]
    assert torch.equal(combine({"layer": heads}, w, 1.0), combine({"layer": heads}, w))


def test_a_bad_aggregate_is_a_one_line_params_error():
    assert load_params(None).capture.aggregate == "mean"
    assert load_params(None, ["capture.aggregate=auto"]).capture.aggregate == "auto"
    with pytest.raises(ParamsError) as err:
        load_params(None, ["capture.aggregate=best"])
    assert "aggregate" in str(err.value) and "\n" not in str(err.value).strip()
    with pytest.raises(ValueError, match="aggregate"):
        CaptureSpec(aggregate="best")


@pytest.fixture(scope="module")
def sd():
    return tiny_sd15_pipeline(seed=0)


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_pipeline()


def _run(pipe, spec, **kw):
    gens = [torch.Generator().manual_seed(s) for s in range(len(PROMPTS))]
    with capture(pipe, spec) as rec:
        images = pipe(PROMPTS, generator=gens, num_inference_steps=2, output_type="np", **kw).images
    return rec, rec.maps(PROMPTS), images


def test_mean_keeps_no_heads_and_gives_the_same_bytes_as_the_mean_sums_under_auto(sd):
    spec = CaptureSpec(cross_resolutions=(16, 8), self_resolutions=(8,))
    rec, maps, images = _run(sd, spec)
    assert rec.state.heads == {} and maps.heads == {} and maps.head_weights(0) == {}
    peak = rec.state.peak_bytes
    auto_rec, auto_maps, auto_images = _run(sd, CaptureSpec(cross_resolutions=(16, 8), self_resolutions=(8,), aggregate="auto"))
    np.testing.assert_array_equal(images, auto_images)  # capture never changes the images
    for res in (16, 8):  # the mean sums are what they were: auto only adds the per-head maps
        assert torch.equal(rec.state.sums[("cross", res)], auto_rec.state.sums[("cross", res)])
        assert maps.cross(0, res).numpy().tobytes() == maps._cross[res][0].numpy().tobytes()
    assert torch.equal(maps.self_attention(1, 8), auto_maps.self_attention(1, 8))
    assert auto_rec.state.peak_bytes > peak  # the heads cost memory only when asked for


def _check_weights(maps, layer_names, res):
    for i in range(len(PROMPTS)):
        chosen = maps.head_weights(i)
        assert list(chosen) == [res] and set(chosen[res]) == layer_names
        total = sum(sum(w) for w in chosen[res].values())
        assert total == pytest.approx(1, abs=1e-4) and all(x >= 0 for w in chosen[res].values() for x in w)
        word = maps.word_map(i, PROMPTS[i].split()[1], 16)
        assert word.shape == (16, 16) and torch.isfinite(word).all()


def test_auto_on_a_unet_records_a_weight_per_layer_and_head(sd):
    rec, maps, _ = _run(sd, CaptureSpec(cross_resolutions=(8,), self_resolutions=(), aggregate="auto"))
    names = {name for (_, name) in rec.state.heads}
    assert names and all(name.endswith("attn2") for name in names)
    assert all(h.shape[1] == 8 for h in maps.heads[8].values())  # 8 heads a layer
    _check_weights(maps, names, 8)
    again = _run(sd, CaptureSpec(cross_resolutions=(8,), self_resolutions=(), aggregate="auto"))[1]
    assert maps.head_weights(1) == again.head_weights(1)  # deterministic


def test_auto_on_a_joint_attention_transformer_records_its_blocks(sd3):
    rec, maps, _ = _run(sd3, CaptureSpec(cross_resolutions=(8,), self_resolutions=(), aggregate="auto"), max_sequence_length=8)
    names = {name for (_, name) in rec.state.heads}
    assert names == {f"transformer_blocks.{b}.attn" for b in range(4)}
    _check_weights(maps, names, 8)


def test_the_single_heads_weighted_as_auto_chose_give_the_joint_slices_class_maps(sd3):
    """A joint slice is combined linearly: every head's class map alone (dmutils.toy.heads), weighted by auto's
    recorded weights under the same labels, is the auto class map; so each head's score is of the map auto used."""
    from dmutils.toy.heads import head_labels, single_head_maps

    _, maps, _ = _run(sd3, CaptureSpec(cross_resolutions=(8,), self_resolutions=(), aggregate="auto"), max_sequence_length=8)
    words = ("dog", "grass")
    singles = single_head_maps(maps, 0, words, 16)
    positions = [k for w in words for k in maps.token_positions(0, w)]
    weights = head_labels(maps.head_weights(0, positions))
    assert list(singles) == list(weights) and len(singles) == 4 * 4  # 4 blocks of 4 heads
    assert all(m.shape == (2, 16, 16) for m in singles.values())
    mixed = sum(weights[label] * m for label, m in singles.items())
    torch.testing.assert_close(mixed, maps.class_maps(0, {w: w for w in words}, size=16), atol=1e-6, rtol=1e-4)


def test_head_choices_report_each_head_and_a_ceiling_no_candidate_beats():
    """The ceiling is the labels' pick per image among the aggregated mask and every single head's: on two images
    where a different head is right in each, it is perfect while each head alone and the aggregate are not."""
    from dmutils.data.toyworld import CLASS_NAMES
    from dmutils.toy.heads import HeadChoices
    from dmutils.toy.probe import class_masks

    class Maps:  # two heads of one layer on a 2x2 grid, one key per class word
        def __init__(self, right_head):
            self.heads = {2: {"layer": torch.zeros(1, 2, 4, 2)}}
            self.heads[2]["layer"][0, right_head, 0, 0] = 1  # the right head puts the word on pixel 0
            self.heads[2]["layer"][0, 1 - right_head, 3, 0] = 1  # the other on pixel 3
            self.heads[2]["layer"][0, :, 1, 1] = 1  # both put the second word on pixel 1

        def token_positions(self, i, word):
            return [0] if word == "circle" else [1]

        def head_weights(self, i, focus):
            return {2: {"layer": [0.5, 0.5]}}

        def grid(self, res):
            return (2, 2)

        def reduce_tokens(self, maps):
            return maps.mean(0)

    classes = ("circle", "square")
    truth = np.zeros((2, 2), np.uint8)
    truth[0, 0], truth[0, 1] = CLASS_NAMES.index("circle") + 1, CLASS_NAMES.index("square") + 1
    wrong = np.zeros((2, 2), np.uint8)
    choices = HeadChoices(lambda m, c: class_masks(m, c, 0.5, "minmax_per_class"))
    for right in (0, 1):
        choices.add(Maps(right), 0, classes, 2, wrong, truth)
    out = choices.summary(np.stack([truth, truth]))
    assert list(out["by_head"]) == ["layer[0]", "layer[1]"]
    assert all(h["weight"] == 0.5 and h["miou"] < 1 for h in out["by_head"].values())
    assert out["ceiling"] == 1.0
