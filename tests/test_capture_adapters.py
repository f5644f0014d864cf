"""The per-family adapter design: family recognition, layer tables, loading any family's pipeline."""
import pytest
import torch

from dmutils.attention import CaptureError, CaptureSpec, capture
from dmutils.attention.adapters import FAMILIES, UNetAdapter, family_for
from dmutils.config import ModelParams
from dmutils.errors import ParamsError
from dmutils.pipeline import load_pipeline, pipeline_class
from dmutils.testing.sd import save_tiny_sd15, tiny_sd15_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unet_pipeline_gets_the_unet_adapter_and_its_layer_table():
    pipe = tiny_sd15_pipeline()
    assert family_for(pipe).adapter is UNetAdapter
    with capture(pipe) as rec:
        assert rec.adapter.family == "unet" and rec.denoiser is pipe.unet and rec.unet is pipe.unet
        layers = rec.adapter.attention_layers()
    # SD 1.5 layout: 3 down blocks x 2 layers + 1 mid + 3 up blocks x 3 layers, one self and one cross each
    assert len(layers) == 2 * (3 * 2 + 1 + 3 * 3)
    assert {layer.kind for layer in layers} == {"cross", "self"}
    assert {(layer.block, layer.level) for layer in layers if layer.block == "mid"} == {("mid", 3)}


def test_a_pipeline_of_no_known_family_is_refused_by_name():
    class NoDenoiser:
        unet = None
        transformer = torch.nn.Linear(1, 1)

    with pytest.raises(ValueError, match=r"cannot capture attention from NoDenoiser \(denoiser Linear\).*supported families"):
        family_for(NoDenoiser())
    assert [f.name for f in FAMILIES][0] == "unet"


def test_load_pipeline_auto_family_reads_model_index(tmp_path):
    folder = save_tiny_sd15(tmp_path / "sd15")
    pipe = load_pipeline(ModelParams(path=str(folder), family="auto", device="cpu"))
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.safety_checker is None
    with pytest.raises(ParamsError, match=r"model.family is 'sdxl' \(StableDiffusionXLPipeline\) but .* holds a "
                                          r"StableDiffusionPipeline; set model.family: sd"):
        load_pipeline(ModelParams(path=str(folder), family="sdxl", device="cpu"))
    assert pipeline_class("auto", "org/hub-model").__name__ == "DiffusionPipeline"
    assert pipeline_class("flux", "org/hub-model").__name__ == "FluxPipeline"
    assert pipeline_class("sd3", "org/hub-model").__name__ == "StableDiffusion3Pipeline"
    (folder / "model_index.json").write_text('{"_class_name": "NoSuchPipeline"}')
    with pytest.raises(ParamsError, match="names 'NoSuchPipeline', which is not a diffusers pipeline class"):
        load_pipeline(ModelParams(path=str(folder), family="auto", device="cpu"))


def test_transformer_settings_on_a_unet_are_refused():
    pipe = tiny_sd15_pipeline()
    with pytest.raises(CaptureError, match="transformer_blocks / capture.depth choose a transformer's blocks"):
        capture(pipe, CaptureSpec(cross_resolutions=(16,), self_resolutions=(), depth=(0.3, 0.6)))
