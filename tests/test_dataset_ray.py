"""``dmutils generate --ray`` on a local Ray cluster (``ray.init(num_cpus=2)``, one per module): two
actors, one of them killed mid-sample, give the bytes of a single-process run. (A killed driver and a
cluster started by ``ray start --head``: tests/test_dataset_ray_cluster.py.)

A tiny random-weight SD pipeline (32 px, 2 steps). Slow: Ray's start-up and each actor's imports and
model load dominate (seconds each on a quiet machine, minutes on an overloaded one)."""
import json
from pathlib import Path

import pytest
import torch
import yaml

ray = pytest.importorskip("ray")

from dmutils.config import load_params  # noqa: E402
from dmutils.dataset.generate import generate_dataset  # noqa: E402
from dmutils.dataset.ray_backend import init_ray  # noqa: E402
from dmutils.errors import ParamsError

pytestmark = pytest.mark.slow
N = 6


def _tiny_params(tmp: Path):
    """A tiny model and params for it (also used by the cluster tests): N samples at batch 2, 2 actors."""
    from dmutils.testing.sd import save_tiny_sd15

    model = save_tiny_sd15(tmp / "tiny-sd")
    raw = {"model": {"path": str(model), "num_inference_steps": 2, "device": "cpu"},
           "capture": {"cross_resolutions": [16, 8]}, "masks": {"threshold": 0.4},
           "dataset": {"out_dir": str(tmp / "ref"), "num_samples": N, "batch_size": 2, "workers": 0, "min_area": 0.0},
           "ray": {"actors": 2, "threads": 1}}
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    return params_file, load_params(params_file)


def files_of(root: Path) -> dict[str, bytes]:
    """Every data file of a dataset folder (dataset.json aside), by relative path; temp files included."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "shards" not in p.parts and p.name != "dataset.json"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A single-process reference dataset (one torch thread, as the actors use), and a local Ray cluster."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ray")
    params_file, params = _tiny_params(tmp)
    generate_dataset(params, progress=False)
    init_ray(num_cpus=2, object_store_memory=100 * 2**20)
    try:
        yield {"tmp": tmp, "file": params_file, "params": params, "ref": files_of(tmp / "ref")}
    finally:
        ray.shutdown()


def _at(params, out: Path):
    return params.model_copy(update={"dataset": params.dataset.model_copy(update={"out_dir": str(out)})})


def test_killed_actor_is_retried_to_the_single_process_bytes(setup, tmp_path):
    """Actor dies after writing sample 3's image (its label and manifest line not): Ray restarts it and
    reruns the block; the dataset equals the single-process one, each sample once, no temp file left."""
    marker = tmp_path / "died"
    summary = generate_dataset(_at(setup["params"], tmp_path / "ds"), progress=False, ray="local", _die_at=(3, str(marker)))
    assert marker.exists(), "the fault was not injected"
    assert summary["generated_now"] == N and summary["written"] + summary["rejected"] == N
    got = files_of(tmp_path / "ds")
    assert got.keys() == setup["ref"].keys()
    assert got == setup["ref"]
    lines = (tmp_path / "ds" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(N))
    # a rerun finds everything done and starts no actor
    again = generate_dataset(_at(setup["params"], tmp_path / "ds"), progress=False, ray="local")
    assert again["generated_now"] == 0 and again["skipped_done"] == N


def test_ray_refuses_a_folder_made_with_other_params_before_starting(setup, tmp_path):
    generate_dataset(_at(setup["params"], tmp_path / "ds").model_copy(
        update={"dataset": setup["params"].dataset.model_copy(update={"out_dir": str(tmp_path / "ds"), "num_samples": 1})}),
        progress=False)
    other = _at(setup["params"], tmp_path / "ds")
    other = other.model_copy(update={"masks": other.masks.model_copy(update={"threshold": 0.3})})
    with pytest.raises(ParamsError, match="other params"):
        generate_dataset(other, progress=False, ray="local")


def test_gpu_cluster_path_generation_then_postprocessing_stage_gives_the_same_records(setup, tmp_path):
    """On GPU clusters actors return pickled jobs and a CPU stage (``finish_jobs``) masks and writes them.
    No GPU here: the two callables run in this process on batches shaped as Ray Data passes them."""
    import numpy as np

    from dmutils.dataset.layout import dataset_meta
    from dmutils.dataset.ray_backend import GenerateBatch, finish_jobs

    params = _at(setup["params"], tmp_path / "ds")
    meta = dataset_meta(params)
    gen = GenerateBatch(params.model_dump(mode="json"), str(tmp_path / "ds"), meta["params_hash"], threads=1, postprocess=False)
    jobs = gen({"indices": np.array([[2, 3]])})
    assert set(jobs) == {"job", "t0", "t1"} and len(jobs["job"]) == 2
    out = finish_jobs(jobs)
    ref_lines = (setup["tmp"] / "ref" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(r) for r in out["record"]] == [json.loads(line) for line in ref_lines[2:4]]
    got = files_of(tmp_path / "ds")
    assert got and all(setup["ref"][k] == v for k, v in got.items())
