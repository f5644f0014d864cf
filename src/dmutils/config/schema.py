"""Typed run parameters: one schema, a default for every setting. The defaults are the toy set-up,
whose classes are plain data here (:data:`TOY_CLASSES`), so the schema imports nothing above it.

Loading (files, ``extends``, ``--set`` overrides, one-line errors) is :mod:`dmutils.config.load`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dmutils.paths import REPO_ROOT

# The toy world's classes: name, synonyms and sub-class words as a real class list has them.
TOY_CLASSES: list[dict] = [
    {"name": "circle", "synonyms": ["disc", "ball"], "subclasses": ["coin"]},
    {"name": "square", "synonyms": ["box", "block"], "subclasses": ["tile"]},
    {"name": "triangle", "synonyms": ["wedge"], "subclasses": ["pyramid"]},
    {"name": "star", "synonyms": ["starfish"], "subclasses": ["sparkle"]},
    {"name": "cross", "synonyms": ["plus"], "subclasses": ["medic"]},
    {"name": "ring", "synonyms": ["donut", "hoop"], "subclasses": ["bagel"]},
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
class ModelParams(_Strict):
    """Which diffusion model generates, and how."""

    path: str = Field("models/toy-sd", description="hub id or local diffusers folder")
    family: Literal["sd", "sdxl", "auto", "sd3", "flux", "pixart", "sana", "flux2", "flux2-klein", "qwenimage", "chroma",
                    "cogview4", "lumina2", "hidream", "zimage",
                    "hunyuanimage"] = Field(
        "sd", description="pipeline class: 'auto' reads model_index.json's _class_name; sd3 covers SD3 and SD3.5")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    num_inference_steps: int = Field(25, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0.0, le=50.0)
    height: int | None = Field(None, ge=8, description="image side; None = the model's default")
    width: int | None = Field(None, ge=8)
    scheduler: str | None = Field(None, description="diffusers scheduler class name; None = the model's")


class ClassSpec(_Strict):
    """One class of the label set, with the words a prompt may use for it."""

    name: str
    synonyms: list[str] = Field(default_factory=list)
    subclasses: list[str] = Field(default_factory=list)


class PromptParams(_Strict):
    """Where prompts come from and how class words are attached to them."""

    source: Literal["templates", "captions", "retrieval"] = "templates"
    templates: list[str] = Field(
        default_factory=lambda: ["a {0}", "a {0} and a {1}", "a photo of a {0} and a {1}"],
        description="'{0}', '{1}', ... are replaced by class words",
    )
    caption_file: str | None = Field(None, description="Dataset Diffusion JSON: filename, caption, class_prompt")
    corpus_file: str | None = Field(None, description="text file, one caption a line, for retrieval")
    class_prompt: Literal["none", "append", "cross_attention"] = Field(
        "append", description="'append': 'a man on a horse; person horse'; 'cross_attention': maps from the class prompt only"
    )
    classes_per_image: list[int] = Field(default_factory=lambda: [1, 2])
    use_synonyms: bool = True
    use_subclasses: bool = Field(True, description="also draw sub-class words (DiffuMask's 'tile' for square); only where the "
                                 "model knows them: params/toy.yaml turns them off, the toy model never saw them")

    @field_validator("classes_per_image")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("must be a non-empty list of counts >= 1")
        return v


class CaptureParams(_Strict):
    """Which attention maps are recorded while the model generates."""

    # Defaults are for the toy model (64 px images, maps at 16/8/4/2). Dataset Diffusion's SD setting is
    # cross [16] + self [32] at 512 px (params/voc_sd15.yaml).
    # On the toy model the 16x16 maps of the late half of the steps localise best (bench toy-model:
    # attention mIoU 0.71 vs 0.64 over all steps and 0.63 with 16+8 maps averaged).
    cross_resolutions: list[int] = Field(default_factory=lambda: [16], description="map side lengths, e.g. 8/16/32/64 for SD at 512 px")
    self_resolutions: list[int] = Field(default_factory=lambda: [16])
    blocks: list[Literal["down", "mid", "up"]] = Field(default_factory=lambda: ["down", "mid", "up"])
    timestep_window: tuple[float, float] = Field((0.5, 1.0), description="fraction of the denoising steps, 0 = first step")
    head_reduce: Literal["mean", "max"] = "mean"
    token_reduce: Literal["mean", "max", "sum"] = "mean"
    aggregate: Literal["mean", "auto"] = Field(
        "mean", description="cross maps over heads and layers: 'mean' = every head and layer alike; 'auto' = weighted per "
        "head and layer from the maps alone (their spatial concentration), the weights kept in the metadata (docs/capture.md)")
    # Diffusion transformers (SD3/SD3.5, FLUX.1): every block's maps lie on the patch grid (latent side / patch size,
    # 32 for SD3.5 and FLUX.1 at 512 px), so cross/self_resolutions name that side; blocks are chosen here instead.
    transformer_blocks: list[int] | None = Field(None, description="transformer block indices (FLUX.1: the dual-stream blocks "
                                                 "first, then the single-stream ones); None = the blocks in 'depth'")
    depth: tuple[float, float] = Field((0.0, 1.0), description="fraction of the transformer's depth whose blocks are read, "
                                       "e.g. [0.333, 0.667] = the middle third (block i sits at (i + 0.5) / blocks)")
    flux_streams: Literal["dual", "single", "both"] = Field("both", description="FLUX.1: dual-stream blocks, single-stream, or both")
    text_part: Literal["clip", "t5", "llama"] = Field(
        "clip", description="SD3: maps over the CLIP tokens (the first 77) or the T5 ones; HiDream: the Llama ones (its first part) "
                            "or the T5 ones; another family: its one text")
    # joint_slice by default: on the toy MMDiT it localises twice as well (bench toy-model --model models/toy-sd3:
    # attention mIoU 0.69 vs 0.34), and a dataset made with text_softmax trains a segmenter to ratio 0.55 instead
    # of 0.92 (bench segmenter). attention-map-diffusers also normalises over the whole joint sequence.
    joint_norm: Literal["text_softmax", "joint_slice"] = Field(
        "joint_slice", description="joint attention: 'joint_slice' = the text columns of the joint image+text softmax (what "
        "the layer used); 'text_softmax' = softmax over the text keys only (maps sum to 1 over tokens, like a UNet's)")
    map_space: Literal["attention", "output"] = Field(
        "attention", description="'output': ConceptAttention's maps (concept outputs . image outputs), transformers only")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "resolution_weights" in data:
            raise ValueError("capture.resolution_weights moved to masks.resolution_weights (one setting for the masks and "
                             "the aggregated maps of the studies); set it there")
        return data

    @field_validator("timestep_window", "depth")
    @classmethod
    def _window(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError("must be (start, end) with 0 <= start < end <= 1")
        return v


class CRFParams(_Strict):
    """DenseCRF refinement (DiffuMask defaults)."""

    enabled: bool = False
    iterations: int = Field(10, ge=1, le=100)
    gaussian_sxy: float = Field(3.0, gt=0)
    gaussian_compat: float = Field(3.0, ge=0)
    bilateral_sxy: float = Field(80.0, gt=0)
    bilateral_srgb: float = Field(13.0, gt=0)
    bilateral_compat: float = Field(10.0, ge=0)


class AffinityParams(_Strict):
    """DiffuMask's learned semantic affinity (AffinityNet-style), for masks.refine='affinity'."""

    radius: int = Field(5, ge=1, le=16, description="pixel pairs / random-walk neighbours within this radius")
    beta: float = Field(8.0, gt=0, description="affinity exponent of the transition matrix (AffinityNet: 8)")
    iterations: int = Field(8, ge=0, le=256, description="random-walk steps")
    dim: int = Field(16, ge=1, description="embedding channels")
    width: int = Field(16, ge=1, description="conv channels")
    steps: int = Field(100, ge=1, description="training steps on the batch of pseudo-masks")
    pairs: int = Field(4096, ge=1, description="pixel pairs sampled per group (bg-bg, object-object, cross-label) per step")
    lr: float = Field(1e-2, gt=0)


class MaskParams(_Strict):
    """How attention maps become labels."""

    normalize: Literal["minmax", "minmax_per_class", "none"] = Field(
        "minmax_per_class", description="'minmax_per_class': each class map to [0, 1] (Dataset Diffusion); 'minmax': jointly")
    upsample: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    tau: int = Field(1, ge=0, le=16, description="self-attention exponent: A* = A_self^tau . A_cross")
    refine: Literal["none", "self_attention", "affinity"] = "self_attention"
    threshold_mode: Literal["fixed", "per_class", "adaptive"] = "fixed"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    threshold_table: str | None = Field(None, description="CSV with columns class,threshold (from study 02)")
    adaptive_candidates: list[float] = Field(default_factory=lambda: [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7])
    uncertain_band: tuple[float, float] | None = Field(None, description="scores in [lo, hi) become 255 = ignore")
    crf: CRFParams = Field(default_factory=CRFParams)
    affinity: AffinityParams = Field(default_factory=AffinityParams)
    resolution_weights: dict[int, float] | None = Field(None, description="weight per cross-attention resolution; None = equal (DiffuMask)")
    min_area: float = Field(0.0, ge=0.0, lt=1.0, description="regions smaller than this image fraction are removed")

    @field_validator("uncertain_band")
    @classmethod
    def _band(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] < v[1] <= 1.0:
            raise ValueError("must be (lo, hi) with 0 <= lo < hi <= 1, or null")
        return v


class SpliceParams(_Strict):
    """DiffuMask's splicing augmentation: mosaics of generated samples."""

    enabled: bool = False
    grids: list[tuple[int, int]] = Field(default_factory=lambda: [(1, 2), (2, 2), (3, 3)])
    count: int = Field(0, ge=0, description="number of mosaics; 0 = as many as source samples")
    blur: float = Field(0.0, ge=0.0)
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)


class DatasetParams(_Strict):
    """The synthetic dataset that generation writes."""

    name: str = "toy-synthetic"
    out_dir: str = Field("data/{run}/synthetic", description="'{run}' is replaced by run.name")
    num_samples: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    save_maps: bool = True
    workers: int = Field(1, ge=0, description="post-processing worker processes; 0 = in the main process")
    min_area: float = Field(0.001, ge=0.0, lt=1.0, description="a named class below this fraction rejects the sample")
    splice: SpliceParams = Field(default_factory=SpliceParams)


class RealDataParams(_Strict):
    """The real dataset that segmenters are evaluated on (and the real-label baseline trains on)."""

    kind: Literal["toy", "voc", "cityscapes", "ade20k", "voc_layout", "coco"] = "toy"
    root: str = Field("data/toy-real", description="dataset folder; for 'toy' it is rendered there if missing")
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    toy_sizes: dict[str, int] = Field(default_factory=lambda: {"train": 400, "val": 100, "test": 200})


class NoiseLearningParams(_Strict):
    """DiffuMask's noise learning: k-fold agreement of each synthetic mask with a held-out prediction."""

    enabled: bool = False
    folds: int = Field(3, ge=2)
    drop_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    fold_steps: int | None = Field(None, ge=1, description="training steps of each fold model; None = train.steps")


class TrainParams(_Strict):
    """Segmenter training (transformers models)."""

    architecture: Literal["segformer", "mask2former", "deeplabv3"] = "segformer"
    pretrained: str | None = Field(None, description="hub id or folder; None = random init from config")
    config: dict[str, Any] = Field(default_factory=dict, description="overrides of the small default config in dmutils.segment.models")
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...")
    image_size: int = Field(64, ge=16)
    steps: int = Field(500, ge=1, description="optimizer steps; 500 at batch 16 on 64 px scenes trained in 313 s on 2 CPU cores "
                       "(results/toy-sd3/bench_segmenter.json, train_seconds)")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    schedule: Literal["poly", "cosine"] = Field("poly", description="learning-rate decay after warmup (poly power 0.9)")
    ema: float | None = Field(None, gt=0, lt=1, description="EMA decay, e.g. 0.999; None = off")
    amp: bool = Field(True, description="mixed precision; used on CUDA only")
    scale_range: tuple[float, float] = (0.75, 1.5)
    flip: bool = True
    photometric: bool = Field(True, description="tint, contrast, blur and noise per batch (dmutils.segment.data.photometric): "
                                                "robustness to the gap between generated and real images")
    cache: bool = Field(True, description="decode every sample once into memory (small sets); off for VOC-sized sets")
    checkpoint_every: int = Field(100, ge=1, description="steps between resumable checkpoints")
    eval_batch_size: int = Field(32, ge=1)
    tta: bool = False
    tta_scales: list[float] = Field(default_factory=lambda: [0.75, 1.0, 1.25], description="multi-scale TTA factors (plus flips)")
    pseudo_label_confidence: float = Field(0.9, ge=0, le=1, description="self-training: pixels below it become 255 = ignore")
    noise_learning: NoiseLearningParams = Field(default_factory=NoiseLearningParams)
    self_training: bool = False
    seen_classes: list[str] | None = Field(None, description="open-vocabulary split; None = all seen")
    backbone: str | None = Field(None, description="deeplabv3 / mask2former: ImageNet-pretrained backbone through "
                                 "transformers.AutoBackbone, hub id (microsoft/resnet-50) or save_pretrained folder; "
                                 "None = random init from the small default config")
    output_stride: Literal[8, 16, 32] = Field(16, description="deeplabv3: backbone stride; 8 and 16 dilate the last "
                                              "ResNet stage(s) instead of striding (DeepLabV3's atrous backbone)")
    backbone_lr_mult: float = Field(1.0, gt=0, le=1, description="learning rate of a deeplabv3 / mask2former backbone "
                                    "as a fraction of train.lr (mmsegmentation's and Mask2Former's lr_mult 0.1)")

    @field_validator("scale_range")
    @classmethod
    def _scales(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("must be (lo, hi) with 0 < lo <= hi, e.g. (0.75, 1.5)")
        return v

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str | None, info) -> str | None:
        if v is None:
            return v
        if info.data.get("architecture") == "segformer":
            raise ValueError("is for 'deeplabv3' and 'mask2former'; a pretrained SegFormer is train.pretrained")
        if not v.strip() or v.startswith(("/", "./", "../", "~")) and not Path(v).expanduser().is_dir():
            raise ValueError("must be a hub id like microsoft/resnet-50 or an existing folder written by save_pretrained")
        return v


class StudyParams(_Strict):
    """Settings of the analysis notebooks."""

    attention_prompts: list[str] = Field(default_factory=lambda: ["a red circle and a blue square"])
    attention_seeds: list[int] = Field(default_factory=lambda: [0, 1])
    timestep_windows: int = Field(4, ge=1, le=50, description="study 01: disjoint windows the denoising steps are split into")
    threshold_images_per_class: int = Field(8, ge=1, description="study 02: generated images per class (every other one names two classes)")
    thresholds: list[float] = Field(default_factory=lambda: [round(0.05 * i, 2) for i in range(1, 20)])
    crf_thresholds: list[float] | None = Field(default_factory=lambda: [round(0.05 + 0.1 * i, 2) for i in range(10)],
                                               description="studies 02 and 05: thresholds of the CRF-on sweeps, 0.05-0.95 in steps "
                                               "of 0.1 (DenseCRF is slow: half of study.thresholds); None = study.thresholds")
    taus: list[int] = Field(default_factory=lambda: [0, 1, 2, 4])
    segmenter_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1,
                                       description="study 04: the training seeds of each run (intervals over seeds and test images)")
    segmenter_steps: int | None = Field(None, ge=1, description="study 04: training steps of a run on n images (the real and the "
                                        "synthetic run; the others scale them to the same epochs); None = train.steps")
    ablation_grid: str | None = Field("params/ablations/toy_small.yaml", description="YAML of variants")
    ablation_samples: int = Field(24, ge=1)
    family_models: list[str] = Field(default_factory=lambda: ["models/toy-sd", "models/toy-sd3"],
                                     description="study 06: model folders compared (any family; each read as its model_index.json says)")
    family_images: int = Field(8, ge=2, description="study 06: two-class prompts per score (bench toy-model's protocol); the best map kind is chosen on the first half and scored on the second")
    family_windows: int = Field(2, ge=1, le=50, description="study 06: disjoint timestep windows scored")


class OracleParams(_Strict):
    """What labels generated images as ground truth in the studies."""

    kind: Literal["toy", "toy_heuristic", "transformers", "none"] = "toy"
    model: str | None = Field(None, description="transformers segmentation model (hub id or folder)")
    class_map: dict[str, str] = Field(default_factory=dict, description="oracle label -> our class")


class RunParams(_Strict):
    """What ``dmutils run`` executes and where the report goes."""

    name: str = Field("toy", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="report folder name: letters, digits, . _ -")
    seed: int = 0
    notebooks: list[str] = Field(
        default_factory=lambda: ["01_attention_analysis", "02_threshold_vs_iou", "03_generate_dataset", "04_train_segmenter", "05_ablations",
                                 "06_model_families", "07_paper_claims"],
        description="names in notebooks_dir ('.ipynb' optional) or paths; run in this order",
    )
    notebooks_dir: str = Field("notebooks", description="where notebook names are looked up")
    reports_dir: str = Field("reports", description="reports go to <reports_dir>/<name>/")


class RayParams(_Strict):
    """How ``dmutils generate --ray`` spreads generation over a Ray cluster (never changes the data)."""

    address: str | None = Field(None, description="None = generate in this process; 'local' = RAY_ADDRESS, else a cluster "
                                                  "started here; or a cluster's address ('auto', 'ray://head:10001'); --ray overrides it")
    actors: int | None = Field(None, ge=1, description="generation actors; None = one per GPU on a GPU cluster, else CPUs // threads")
    threads: int = Field(1, ge=1, description="torch threads of each CPU actor (the saved maps' float sums depend on it)")
    gpus_per_actor: float = Field(1.0, gt=0, description="GPUs each actor holds when the cluster has GPUs")


class Params(_Strict):
    """Everything one run needs."""

    run: RunParams = Field(default_factory=RunParams)
    model: ModelParams = Field(default_factory=ModelParams)
    classes: list[ClassSpec] = Field(default_factory=lambda: [ClassSpec(**c) for c in TOY_CLASSES],
                                     description="absent = the toy world's classes; an explicit list must name at least one")
    prompts: PromptParams = Field(default_factory=PromptParams)
    capture: CaptureParams = Field(default_factory=CaptureParams)
    masks: MaskParams = Field(default_factory=MaskParams)
    dataset: DatasetParams = Field(default_factory=DatasetParams)
    real: RealDataParams = Field(default_factory=RealDataParams)
    train: TrainParams = Field(default_factory=TrainParams)
    study: StudyParams = Field(default_factory=StudyParams)
    oracle: OracleParams = Field(default_factory=OracleParams)
    ray: RayParams = Field(default_factory=RayParams)

    @field_validator("classes")
    @classmethod
    def _classes_named_once(cls, v: list[ClassSpec]) -> list[ClassSpec]:
        entry = "each entry looks like {name: cat, synonyms: [kitten], subclasses: [tabby]}"
        if not v:
            raise ValueError(f"an empty class list: name at least one class ({entry}), or leave 'classes' out for the toy classes")
        names = [c.name for c in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"class names must be unique, {', '.join(map(repr, dup))} appears more than once ({entry})")
        return v

    # -- helpers ------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def resolve_path(self, p: str) -> Path:
        """A path from the params, relative to the repository root unless absolute; '{run}' expanded."""
        path = Path(p.replace("{run}", self.run.name)).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    def digest(self, *sections: str) -> str:
        """A short hash of the named sections (all when none): same params, same hash."""
        data = self.model_dump(mode="json")
        if sections:
            data = {k: data[k] for k in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
