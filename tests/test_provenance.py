"""dmutils.provenance (the block every result JSON carries), `dmutils bench --json/--out` writing it, and study 06
refusing a segmenter result made from other weights. Fast: nothing here loads a model."""
import argparse
import json
import sys
import types

import pytest

from dmutils import provenance as prov
from dmutils.errors import DataError, DataNotFoundError


def _model(folder, weights: bytes = b"w1"):
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "X"}')
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "pytorch_model.bin").write_bytes(b"te")
    return folder


def test_model_hash_covers_the_weight_files_names_and_bytes_only(tmp_path):
    a = _model(tmp_path / "a")
    h, n = prov.model_hash_and_count(a)
    assert n == 2 and len(h) == 16 and prov.model_hash(a) == h
    assert prov.model_hash(_model(tmp_path / "b")) == h  # same weights elsewhere, same hash
    (a / "unet" / "config.json").write_text('{"changed": 1}')
    (a / "training_log.txt").write_text("log")
    (a / "bench_segmenter.json").write_text("{}")
    assert prov.model_hash(a) == h  # configs, logs and results beside the weights do not count
    assert prov.model_hash(_model(tmp_path / "c", b"w2")) != h  # one weight file's bytes
    (a / "text_encoder" / "pytorch_model.bin").rename(a / "text_encoder" / "other.bin")
    assert prov.model_hash(a) != h  # a renamed weight file
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "nowhere"):
        with pytest.raises(DataNotFoundError, match="nothing to hash"):
            prov.model_hash(folder)


def test_provenance_block_fields(tmp_path):
    import torch

    from dmutils.config import load_params
    from dmutils.paths import REPO_ROOT

    params = load_params(None)
    p = prov.provenance(["dmutils", "bench", "x", "--out", "a b.json"], params, _model(tmp_path / "m"), device="cpu")
    assert p["command"] == "dmutils bench x --out 'a b.json'" and p["params_digest"] == params.digest()
    assert p["model_hash"] == prov.model_hash(tmp_path / "m") and p["model_files_hashed"] == 2
    if (REPO_ROOT / ".git").exists():  # a git checkout (a clone or a worktree)
        assert len(p["commit"]) == 40 and isinstance(p["dirty"], bool)
    assert p["utc"].endswith("+00:00") and p["packages"]["numpy"] and p["packages"]["python"]
    m = p["machine"]
    assert m["cpu_count"] >= 1 and m["device"] == "cpu" and len(m["load_average"]) == 3 and m["platform"]
    assert m["torch_threads"] == torch.get_num_threads()  # read when torch is loaded, never imported for it
    bare = prov.provenance("dmutils bench y")
    assert bare["params_digest"] is None and bare["model_hash"] is None and bare["model_files_hashed"] == 0


def test_runner_uses_the_provenance_helpers():
    from dmutils import runner

    assert runner.git_info is prov.git_info and runner.package_versions is prov.package_versions


def test_bench_out_writes_the_json_with_provenance_and_the_argv(tmp_path, monkeypatch, capsys):
    from dmutils.commands import bench
    from dmutils.config import load_params

    params, model = load_params(None), _model(tmp_path / "m")
    fake = types.ModuleType("dmutils.benchmarks.fake_for_test")
    fake.run = lambda args: {"figure": 0.5, "_inputs": {"params": params, "model_dir": model, "device": "cpu"}}
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    out = tmp_path / "results" / "sub" / "bench_fake.json"
    args = argparse.Namespace(name="fake-for-test", json=True, quick=True, model=str(model), seed=3, out=str(out))
    assert bench.main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads(out.read_text())
    assert written == printed and written["figure"] == 0.5 and "_inputs" not in written
    p = written["provenance"]
    assert p["command"] == f"dmutils bench fake-for-test --model {model} --seed 3 --quick --json --out {out}"
    assert p["model_hash"] == prov.model_hash(model) and p["params_digest"] == params.digest() and p["seconds"] >= 0
    assert len(p["machine"]["load_average_start"]) == 3 and p["machine"]["device"] == "cpu"
    assert not list(out.parent.glob(".*.tmp"))  # written atomically
    # without --json and --out: the table, no provenance computed
    assert bench.main(argparse.Namespace(name="fake-for-test", json=False)) == 0
    assert capsys.readouterr().out.split() == ["figure", "0.5"]


def test_bench_out_into_an_unwritable_place_fails_before_the_benchmark(tmp_path, monkeypatch):
    from dmutils.commands import bench
    from dmutils.errors import OutputDirError

    ran = []
    fake = types.ModuleType("dmutils.benchmarks.fake_for_test")
    fake.run = lambda args: ran.append(1) or {}
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputDirError):
        bench.main(argparse.Namespace(name="fake-for-test", json=True, out=str(tmp_path / "file" / "x.json")))
    assert ran == []


def test_study06_reads_a_segmenter_ratio_only_from_the_same_weights(tmp_path, monkeypatch):
    from dmutils.config import load_params
    from dmutils.studies import model_families as study

    monkeypatch.setattr(study, "RESULTS_DIR", tmp_path / "results")
    params = load_params(None)
    model = _model(tmp_path / "models" / "toy-x")
    assert study.measured_segmenter_ratio(params, str(model)) is None  # never measured
    f = tmp_path / "results" / "toy-x" / "bench_segmenter.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"ratio": 0.9, "provenance": {"model_hash": prov.model_hash(model)}}))
    assert study.measured_segmenter_ratio(params, str(model)) == 0.9
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"retrained")
    with pytest.raises(DataError) as e:
        study.measured_segmenter_ratio(params, str(model))
    msg = str(e.value)
    assert "\n" not in msg and "was made from other weights" in msg and prov.model_hash(model) in msg
    assert f"dmutils bench segmenter --model {model} --json --out results/toy-x/bench_segmenter.json" in msg
    f.write_text(json.dumps({"ratio": 0.9}))
    with pytest.raises(DataError, match="has no provenance model_hash"):
        study.measured_segmenter_ratio(params, str(model))


def test_study06_cache_key_follows_the_weights_and_configs_not_the_files_beside_them(tmp_path):
    from dmutils.config import load_params
    from dmutils.studies import model_families as study

    params, model = load_params(None), _model(tmp_path / "m")
    key = study.model_key(params, str(model), 2, 2)
    (model / "training_log.txt").write_text("more steps")
    assert study.model_key(params, str(model), 2, 2) == key
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"w2")
    assert study.model_key(params, str(model), 2, 2) != key
    key = study.model_key(params, str(model), 2, 2)
    (model / "unet" / "config.json").write_text('{"layers": 3}')
    assert study.model_key(params, str(model), 2, 2) != key
