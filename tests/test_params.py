"""The params schema: defaults, loud one-line errors, ``extends`` and ``--set`` overrides."""
import re
from pathlib import Path

import pytest
import yaml

from dmutils.config import load_params, parse_overrides
from dmutils.data.toyworld import CLASS_NAMES
from dmutils.errors import ParamsError
from dmutils.paths import REPO_ROOT


def write(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(*args, one_line: bool = True, **kwargs) -> str:
    with pytest.raises(ParamsError) as e:
        load_params(*args, **kwargs)
    msg = str(e.value)
    assert not one_line or "\n" not in msg, "errors must fit on one line"
    return msg


# -- defaults and shipped files ----------------------------------------------------------------
def test_defaults_are_the_toy_setup():
    p = load_params()
    assert p.run.name == "toy"
    assert p.model.path == "models/toy-sd"
    assert p.class_names == CLASS_NAMES
    assert p.real.kind == "toy"
    assert p.digest() == load_params().digest()
    assert p.digest() != load_params(overrides=["masks.tau=3"]).digest()


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_params_files_validate(path):
    p = load_params(path)
    assert p.run.name == path.stem, "a params file names its run after itself, so reports do not collide"


@pytest.mark.parametrize("name", ["voc_sd15", "cityscapes_sd15", "ade20k_sd15"])
def test_real_setups_carry_sd_settings_not_the_toys(name):
    p, toy = load_params(REPO_ROOT / f"params/{name}.yaml"), load_params(REPO_ROOT / "params/toy.yaml")
    assert p.model.path == "stable-diffusion-v1-5/stable-diffusion-v1-5" and p.model.dtype == "float16"
    assert (p.model.height, p.model.width) == (512, 512) and p.model.guidance_scale == 7.5 != toy.model.guidance_scale
    assert p.capture.cross_resolutions == [16] and p.capture.self_resolutions == [32]
    # the toy's tuned choices (tau 0 + CRF, photometric off, short trainings, toy noise-learning folds) are not inherited
    assert (p.masks.tau, p.masks.crf.enabled, p.masks.uncertain_band) == (4, False, (0.5, 0.6))
    assert p.train.photometric and p.train.steps == 20000 and p.train.noise_learning.fold_steps is None
    assert (p.train.architecture, p.train.backbone, p.train.image_size) == ("deeplabv3", "microsoft/resnet-50", 512)
    assert p.train.backbone_lr_mult == 0.1 and p.train.lr == 1e-4
    assert p.prompts.use_subclasses and p.oracle.kind == "none" and p.study.ablation_grid is None


def test_voc_setup_classes():
    p = load_params(REPO_ROOT / "params/voc_sd15.yaml")
    assert p.real.kind == "voc" and p.real.root.endswith("VOC2012")
    assert len(p.class_names) == 20 and p.class_names[0] == "aeroplane" and p.class_names[-1] == "tvmonitor"


def test_no_params_file_uses_the_removed_hub_id():
    for path in REPO_ROOT.glob("params/**/*.yaml"):
        assert not re.search(r"path:\s*runwayml/", path.read_text()), path


def test_relative_path_falls_back_to_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_params("params/toy.yaml").run.name == "toy"


# -- unknown keys ------------------------------------------------------------------------------
@pytest.mark.parametrize("data, bad, near", [
    ({"captur": {"tau": 1}}, "captur", "capture"),
    ({"masks": {"tua": 2}}, "masks.tua", "masks.tau"),
    ({"masks": {"crf": {"iteration": 5}}}, "masks.crf.iteration", "masks.crf.iterations"),
    ({"run": {"notebook_dir": "x"}}, "run.notebook_dir", "run.notebooks_dir"),
])
def test_unknown_key_names_it_and_the_nearest_valid_key(tmp_path, data, bad, near):
    msg = error_of(write(tmp_path / "p.yaml", data))
    assert f"'{bad}'" in msg and f"'{near}'" in msg


def test_unknown_key_without_a_near_one_lists_the_valid_keys(tmp_path):
    msg = error_of(write(tmp_path / "p.yaml", {"masks": {"zzzzzz": 1}}))
    assert "masks.zzzzzz" in msg and "threshold_mode" in msg


# -- wrong types and ranges --------------------------------------------------------------------
@pytest.mark.parametrize("data, field, value, allowed", [
    ({"masks": {"tau": "high"}}, "masks.tau", "'high'", "integer"),
    ({"masks": {"threshold": 1.5}}, "masks.threshold", "1.5", "less than or equal to 1"),
    ({"model": {"dtype": "float8"}}, "model.dtype", "'float8'", "'float16'"),
    ({"dataset": {"num_samples": 0}}, "dataset.num_samples", "0", "greater than or equal to 1"),
    ({"capture": {"timestep_window": [0.8, 0.2]}}, "capture.timestep_window", "0.8", "start < end"),
    ({"run": {"name": "../escape"}}, "run.name", "'../escape'", "pattern"),
])
def test_bad_value_names_field_value_and_what_is_allowed(tmp_path, data, field, value, allowed):
    msg = error_of(write(tmp_path / "p.yaml", data))
    assert f"'{field}'" in msg and value in msg and allowed in msg


@pytest.mark.parametrize("override, says", [
    ("classes=[]", "an empty class list"),
    ("classes=[{name: cat}, {name: dog}, {name: cat}]", "'cat' appears more than once"),
])
def test_empty_or_duplicate_classes_are_an_error_showing_an_entry(override, says):
    msg = error_of(overrides=[override])
    assert says in msg and "{name: cat, synonyms: [kitten]" in msg


def test_classes_left_out_are_the_toy_classes():
    assert load_params(overrides=["run.name=x"]).class_names == CLASS_NAMES


def test_file_errors_are_clear(tmp_path):
    assert "not found" in error_of(tmp_path / "missing.yaml")
    assert "not valid YAML" in error_of(write(tmp_path / "bad.yaml", "masks: [unclosed"), one_line=False)
    assert "mapping" in error_of(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


# -- extends -----------------------------------------------------------------------------------
def test_extends_chain_merges_key_by_key(tmp_path):
    write(tmp_path / "base/c.yaml", {"run": {"name": "c", "seed": 7}, "masks": {"tau": 4, "threshold": 0.3}})
    write(tmp_path / "base/b.yaml", {"extends": "c.yaml", "masks": {"tau": 2}, "capture": {"cross_resolutions": [8, 16]}})
    a = write(tmp_path / "a.yaml", {"extends": "base/b.yaml", "run": {"name": "a"}, "masks": {"crf": {"enabled": True}}})
    p = load_params(a)
    assert p.run.name == "a" and p.run.seed == 7  # nested mappings merge, leaves override
    assert (p.masks.tau, p.masks.threshold, p.masks.crf.enabled) == (2, 0.3, True)
    assert p.capture.cross_resolutions == [8, 16]
    assert p.masks.crf.iterations == load_params().masks.crf.iterations  # untouched leaves keep defaults


def test_extends_loops_are_reported(tmp_path):
    write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    assert "loops" in error_of(tmp_path / "a.yaml")
    assert "loops" in error_of(write(tmp_path / "self.yaml", {"extends": "self.yaml"}))


def test_extends_missing_parent(tmp_path):
    msg = error_of(write(tmp_path / "a.yaml", {"extends": "nope.yaml"}))
    assert "nope.yaml" in msg and "not found" in msg


def test_error_in_parent_is_still_named(tmp_path):
    write(tmp_path / "parent.yaml", {"masks": {"tua": 1}})
    assert "masks.tau" in error_of(write(tmp_path / "child.yaml", {"extends": "parent.yaml"}))


# -- --set overrides ---------------------------------------------------------------------------
def test_parse_overrides_types_and_nesting():
    got = parse_overrides(["capture.cross_resolutions=[8, 16]", "masks.crf.enabled=true", "masks.threshold=0.4",
                           "run.name=abc", "masks.tau=2", "capture.timestep_window=[0.1,0.9]", "study.ablation_grid=null"])
    assert got == {"capture": {"cross_resolutions": [8, 16], "timestep_window": [0.1, 0.9]},
                   "masks": {"crf": {"enabled": True}, "threshold": 0.4, "tau": 2},
                   "run": {"name": "abc"}, "study": {"ablation_grid": None}}


def test_value_may_contain_equals_sign():
    assert parse_overrides(["prompts.templates=['a=b {0}']"]) == {"prompts": {"templates": ["a=b {0}"]}}


def test_overrides_apply_after_the_file(tmp_path):
    f = write(tmp_path / "p.yaml", {"masks": {"tau": 4, "threshold": 0.3}})
    p = load_params(f, ["masks.tau=1", "masks.crf.enabled=yes", "capture.self_resolutions=[16, 32]"])
    assert (p.masks.tau, p.masks.threshold, p.masks.crf.enabled) == (1, 0.3, True)
    assert p.capture.self_resolutions == [16, 32]


@pytest.mark.parametrize("item, words", [
    ("masks.tau", ["masks.tau", "="]),
    ("masks..tau=1", ["empty key"]),
    ("masks=1", None),  # a section replaced by a scalar: caught by validation
])
def test_bad_override_syntax(item, words):
    with pytest.raises(ParamsError) as e:
        load_params(overrides=[item])
    for w in words or ["masks"]:
        assert w in str(e.value)


def test_override_errors_name_key_and_value():
    assert "did you mean 'masks.tau'" in error_of(overrides=["masks.tua=2"])
    msg = error_of(overrides=["masks.tau=abc"])
    assert "'masks.tau'" in msg and "'abc'" in msg and "overrides" in msg
