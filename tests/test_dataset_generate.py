"""The dataset factory end to end on a tiny random-weight SD pipeline (32 px, 2 steps).

One reference dataset is generated per module; the other tests compare against its bytes.
"""
import errno
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dmutils.config import MaskParams, load_params
from dmutils.data import voc
from dmutils.dataset import generate as gen
from dmutils.dataset import layout
from dmutils.dataset.generate import generate_dataset
from dmutils.dataset.labelling import label_sample
from dmutils.dataset.remask import mask_overrides, remask_dataset
from dmutils.dataset.shards import merge_shards
from dmutils.dataset.pool import make_pool
from dmutils.errors import DiskFullError, ParamsError, UserError, WorkersKilledError
from dmutils.testing.signals import stop_when

N = 4


def _files(root: Path) -> dict[str, bytes]:
    """Every data file of a dataset folder (dataset.json aside), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "shards" not in p.parts and p.name != "dataset.json"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dmutils.pipeline import load_pipeline
    from dmutils.testing.sd import save_tiny_sd15

    # float sums (the saved maps) depend on the thread count: the reference, the killed subprocess and
    # the resume all run on one thread (other test modules change torch's count in this process)
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("gen")
    model = save_tiny_sd15(tmp / "tiny-sd")
    raw = {"model": {"path": str(model), "num_inference_steps": 2, "device": "cpu"},
           "capture": {"cross_resolutions": [16, 8], "self_resolutions": [16]},
           "masks": {"threshold": 0.4},
           "dataset": {"out_dir": str(tmp / "ref"), "num_samples": N, "batch_size": 2, "workers": 0, "min_area": 0.0}}
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    params = load_params(params_file)
    pipe = load_pipeline(params.model)
    summary = generate_dataset(params, pipe=pipe, progress=False)
    return {"tmp": tmp, "file": params_file, "params": params, "pipe": pipe, "ref": tmp / "ref", "summary": summary}


def _with(params, **dataset):
    return params.model_copy(update={"dataset": params.dataset.model_copy(update=dataset)})


def test_reference_layout_and_manifest(setup):
    ref, s = setup["ref"], setup["summary"]
    records = [json.loads(line) for line in (ref / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(N))
    assert s["written"] + s["rejected"] == N and s["generated_now"] == N
    meta = json.loads((ref / "dataset.json").read_text())
    assert meta["classes"][0] == "background" and meta["params_hash"] == records[0]["params_hash"]
    split_ids = voc.read_split(ref, "train") + voc.read_split(ref, "val")
    ok = [r for r in records if r["status"] == "ok"]
    assert sorted(split_ids) == sorted(r["id"] for r in ok)
    for r in ok:  # palette PNG with class ids of the named classes only (0 = background, 255 = ignore)
        label = voc.read_label(ref / voc.LABELS / f"{r['id']}.png")
        allowed = {0, 255} | {meta["classes"].index(c) for c in r["classes"]}
        assert set(np.unique(label)) <= allowed
        assert voc.read_image(ref / voc.IMAGES / f"{r['id']}.jpg").shape[:2] == label.shape
        with np.load(ref / "maps" / f"{r['id']}.npz") as z:
            assert z["cross_16"].dtype == np.float16 and z["cross_16"].shape == (len(r["classes"]), 16, 16)
    for r in records:
        if r["status"] != "ok":
            assert r["reason"] and not (ref / voc.IMAGES / f"{r['id']}.jpg").exists()
    # the contact sheet of the finished dataset (dmutils.dataset.preview), every written sample on its page
    assert s["preview"] == str(ref / "preview.png") and (ref / "preview.png").stat().st_size > 0
    page = (ref / "preview.html").read_text()
    assert all(f'data-id="{r["id"]}"' in page for r in ok)


def test_rerun_skips_done_samples(setup):
    def boom(*a, **k):
        raise AssertionError("nothing is left to generate: the pipeline must not run")

    before = _files(setup["ref"])
    s = generate_dataset(setup["params"], pipe=boom, progress=False)
    assert s["generated_now"] == 0 and s["skipped_done"] == N
    assert _files(setup["ref"]) == before


def test_shards_merge_to_the_same_bytes_as_one_run(setup, tmp_path):
    params = _with(setup["params"], out_dir=str(tmp_path / "sharded"))
    generate_dataset(params, shard=(0, 2), pipe=setup["pipe"], progress=False)
    generate_dataset(_with(params, workers=1), shard=(1, 2), pipe=setup["pipe"], progress=False)  # worker processes
    first = [json.loads(x)["index"] for x in (tmp_path / "sharded/shards/0-of-2/manifest.jsonl").read_text().splitlines()]
    assert first == [0, 2]
    assert not list((tmp_path / "sharded").rglob("preview.*"))  # a shard is not a finished dataset: no preview yet
    with pytest.raises(ParamsError, match="complete set"):
        merge_shards(tmp_path / "partial", [tmp_path / "sharded/shards/0-of-2"])
    merge_shards(tmp_path / "sharded")
    assert _files(tmp_path / "sharded") == _files(setup["ref"])  # preview.png/html included: the merge writes the same


def test_other_batch_size_gives_same_samples(setup, tmp_path):
    params = _with(setup["params"], out_dir=str(tmp_path / "b3"), batch_size=3)
    generate_dataset(params, pipe=setup["pipe"], progress=False)
    a = [json.loads(x) for x in (setup["ref"] / "manifest.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b3/manifest.jsonl").read_text().splitlines()]
    key = ("id", "prompt", "seed", "classes", "words", "split")
    assert [[r[k] for k in key] for r in a] == [[r[k] for k in key] for r in b]
    for r in a:  # same noise and prompt: equal up to the float noise of another batch size
        ja, jb = setup["ref"] / voc.IMAGES / f"{r['id']}.jpg", tmp_path / "b3" / voc.IMAGES / f"{r['id']}.jpg"
        if ja.exists() and jb.exists():
            assert np.abs(voc.read_image(ja).astype(int) - voc.read_image(jb)).mean() < 0.5


def test_folder_made_with_other_params_is_refused(setup):
    other = setup["params"].model_copy(update={"masks": setup["params"].masks.model_copy(update={"threshold": 0.6})})
    with pytest.raises(ParamsError, match=r"other params.*masks\.threshold: 0\.4 -> 0\.6.*--overwrite"):
        generate_dataset(other, pipe=None, progress=False)  # refused before any model is loaded


def test_a_dataset_made_before_a_setting_existed_resumes_at_its_default(setup, tmp_path):
    """capture.aggregate came after datasets were made: at its default ('mean', what they were made with) the
    hash is unchanged, so such a dataset resumes; 'auto' is other data."""
    from dmutils.dataset.layout import data_hash, data_params

    params = setup["params"]
    assert "aggregate" not in data_params(params)["capture"]
    auto = params.model_copy(update={"capture": params.capture.model_copy(update={"aggregate": "auto"})})
    assert data_params(auto)["capture"]["aggregate"] == "auto" and data_hash(auto) != data_hash(params)


# ``dmutils generate`` whose second batch waits: stopped there, the run has its first batch committed and no more,
# whatever the machine's speed (a run that could finish before the signal would make the test flaky)
SECOND_BATCH_WAITS = """
import sys, time
from dmutils.commands import main
from dmutils.dataset import generate
calls, real = [], generate.generate_batch
def second_waits(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        time.sleep(120)
    return real(*args, **kwargs)
generate.generate_batch = second_waits
sys.exit(main(sys.argv[1:]))
"""


def _stop_after_first_sample(setup, out: Path, sig: int) -> tuple[int, str]:
    """Run ``dmutils generate`` in a subprocess, send ``sig`` to it once a sample is committed; its exit code and output."""
    cmd = [sys.executable, "-c", SECOND_BATCH_WAITS, "generate", str(setup["file"]), "--no-progress",
           "--set", f"dataset.out_dir={out}"]
    torch.set_num_threads(1)
    manifest = out / "manifest.jsonl"
    return stop_when(cmd, lambda: manifest.is_file() and manifest.read_bytes().count(b"\n") >= 1, sig, "generate")


def _resume_equals_reference(setup, out: Path) -> None:
    done = (out / "manifest.jsonl").read_bytes().count(b"\n")
    assert 1 <= done < N
    s = generate_dataset(_with(setup["params"], out_dir=str(out)), pipe=setup["pipe"], progress=False)
    assert s["skipped_done"] == done and s["generated_now"] == N - done
    assert not list(out.rglob("*.tmp"))
    assert _files(out) == _files(setup["ref"])


def test_resume_after_kill_is_byte_identical(setup, tmp_path):
    out = tmp_path / "killed"
    _stop_after_first_sample(setup, out, signal.SIGKILL)
    _resume_equals_reference(setup, out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_cancel_during_generate_leaves_no_partial_file(setup, tmp_path, sig):
    """Ctrl-C or a scheduler's cancel mid-run: the one line, exit 130, no temp file, the folder's lock released,
    and the resumed run equals the uninterrupted one."""
    out = tmp_path / "interrupted"
    code, output = _stop_after_first_sample(setup, out, sig)
    assert code == 130 and "dmutils generate: interrupted; finished work is kept, re-run to resume" in output, output
    assert "Traceback" not in output, output
    assert not list(out.rglob("*.tmp")) and not (out / ".dmutils.lock").exists()
    _resume_equals_reference(setup, out)


def test_rejected_samples_are_recorded_not_written(setup, tmp_path):
    params = _with(setup["params"], out_dir=str(tmp_path / "strict"), num_samples=2, min_area=0.99)
    s = generate_dataset(params, pipe=setup["pipe"], progress=False)
    assert s["written"] == 0 and s["rejected"] == 2
    for r in map(json.loads, (tmp_path / "strict/manifest.jsonl").read_text().splitlines()):
        assert r["status"] == "rejected" and ("min_area" in r["reason"] or "empty mask" in r["reason"])
    assert not list((tmp_path / "strict").glob("JPEGImages/*"))
    assert voc.read_split(tmp_path / "strict", "train") == []


def test_bad_maps_give_reasons():
    image = np.zeros((32, 32, 3), np.uint8)
    good = {16: np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)}
    bad = {16: good[16].copy()}
    bad[16][1, 3, 3] = np.nan
    mp = MaskParams(refine="none", threshold=0.3)
    _, _, reason = label_sample(image, bad, None, ["circle", "square"], [1, 2], mp, 0.0)
    assert reason.startswith("non-finite maps")
    flat = {16: np.stack([good[16][0], np.zeros((16, 16), np.float32)])}  # square has no evidence anywhere
    _, fractions, reason = label_sample(image, flat, None, ["circle", "square"], [1, 2], mp, 0.0)
    assert fractions["square"] == 0 and "empty mask" in reason and "square" in reason


def test_remask_reproduces_then_changes_masks_without_generating(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "pipeline_for", lambda p: (_ for _ in ()).throw(AssertionError("no generation")))
    ref = setup["ref"]
    same = remask_dataset(ref, {}, tmp_path / "same", workers=0, progress=False)
    assert same["remasked"] == setup["summary"]["written"]
    labels = sorted(p.name for p in (ref / voc.LABELS).iterdir())
    assert all((tmp_path / "same" / voc.LABELS / n).read_bytes() == (ref / voc.LABELS / n).read_bytes() for n in labels)
    remask_dataset(ref, mask_overrides(None, ["masks.threshold=0.8"]), tmp_path / "high", workers=1, progress=False)  # a pool
    new = [(tmp_path / "high" / voc.LABELS / n) for n in labels]
    changed = [n for n, p in zip(labels, new) if not p.exists() or p.read_bytes() != (ref / voc.LABELS / n).read_bytes()]
    assert changed, "a higher threshold must change some mask"
    for p in new:
        if p.exists():  # fewer foreground pixels at a higher threshold
            assert (voc.read_label(p) > 0).sum() <= (voc.read_label(ref / voc.LABELS / p.name) > 0).sum()
    meta = json.loads((tmp_path / "high/dataset.json").read_text())
    assert meta["params"]["masks"]["threshold"] == 0.8
    with pytest.raises(ParamsError, match="capture.tau|capture"):
        mask_overrides(None, ["capture.head_reduce=max"])


def test_self_attention_is_captured_only_when_masks_read_it(setup, tmp_path):
    params = setup["params"]
    no_self = params.model_copy(update={"masks": params.masks.model_copy(update={"tau": 0})})
    no_self = _with(no_self, out_dir=str(tmp_path / "tau0"), num_samples=2)
    generate_dataset(no_self, pipe=setup["pipe"], progress=False)
    for npz in (tmp_path / "tau0" / layout.MAPS).iterdir():
        cross, self_attn = layout.read_maps(npz)
        assert sorted(cross) == [8, 16] and self_attn is None
    assert all(layout.read_maps(p)[1] for p in (setup["ref"] / layout.MAPS).iterdir())  # tau=1: saved
    with pytest.raises(ParamsError, match="needs self-attention maps"):
        remask_dataset(tmp_path / "tau0", {"masks": {"tau": 2}}, tmp_path / "tau2", workers=0, progress=False)
    assert not (tmp_path / "tau2").exists()


def test_params_diff_names_changed_added_and_removed_keys():
    old = {"capture": {"resolution_weights": None, "blocks": ["up"]}, "masks": {"threshold": 0.5}}
    new = {"capture": {"blocks": ["up"]}, "masks": {"threshold": 0.4, "tau": 0}}
    assert layout.params_diff(old, new) == ["capture.resolution_weights: None -> (absent)", "masks.tau: (absent) -> 0",
                                         "masks.threshold: 0.5 -> 0.4"]


def test_resume_removes_the_temp_files_of_killed_writes(setup, tmp_path):
    """A writer killed between mkstemp and rename (a SIGKILLed actor) leaves '.<name>.<rand>.tmp'; the resumed
    run deletes it and the dataset equals the uninterrupted one."""
    out = tmp_path / "stale"
    params = _with(setup["params"], out_dir=str(out))
    generate_dataset(params, pipe=setup["pipe"], progress=False)
    stale = out / "maps" / ".syn_000001.npz.abc123.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a file")
    generate_dataset(params, pipe=setup["pipe"], progress=False)
    assert not stale.exists() and _files(out) == _files(setup["ref"])


def test_full_disk_is_one_line_and_resumes_to_the_same_bytes(setup, tmp_path, monkeypatch, capsys):
    """ENOSPC at the first sample file written after two samples are committed (os.fsync fails, as it does on a full
    disk): one line naming the folder and the space the rest needs, no temp file, and after space is freed the
    resumed run equals the uninterrupted one."""
    from dmutils.commands import main

    out = tmp_path / "full"
    real_fsync, manifest = os.fsync, out / "manifest.jsonl"

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and manifest.is_file() and manifest.read_bytes().count(b"\n") >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code = main(["generate", str(setup["file"]), "--no-progress", "--set", f"dataset.out_dir={out}"])
    monkeypatch.setattr(os, "fsync", real_fsync)  # space is freed
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"dmutils generate: error: {out}: the disk is full (no space left on device) after 2 of {N} samples; "
                          f"it needs about ") and f"more for the {N - 2} samples left (" in err and "re-run to resume" in err, err
    assert not list(out.rglob("*.tmp")) and not (out / ".dmutils.lock").exists()
    s = generate_dataset(_with(setup["params"], out_dir=str(out)), pipe=setup["pipe"], progress=False)
    assert s["skipped_done"] == 2 and s["generated_now"] == N - 2
    assert _files(out) == _files(setup["ref"])


def test_disk_full_error_estimates_from_the_samples_so_far(setup, tmp_path):
    out = tmp_path / "est"
    params = _with(setup["params"], out_dir=str(out), num_samples=10)
    (out / "maps").mkdir(parents=True)
    (out / "maps" / "a.npz").write_bytes(b"x" * 3000)
    (out / "manifest.jsonl").write_text('{"index": 0}\n{"index": 1}\n')
    e = gen.disk_full(out, params, None)
    assert isinstance(e, DiskFullError) and "after 2 of 10 samples" in str(e)
    assert "about 12.1 KB more for the 8 samples left (1.5 KB a sample so far)" in str(e)  # (3000 B + a 26 B manifest) / 2 x 8
    (out / "manifest.jsonl").unlink()
    assert "space for all 10 samples (none finished" in str(gen.disk_full(out, params, None))


def test_killed_post_processing_worker_is_replaced_and_gives_the_same_bytes(setup, tmp_path, capsys):
    """A worker SIGKILLed half-way through sample 1's image (the out-of-memory killer): the pool restarts, the samples
    not yet written are redone, and the dataset equals the uninterrupted one, no temp file left."""
    marker, out = tmp_path / "died", tmp_path / "killed-worker"
    params = _with(setup["params"], out_dir=str(out), workers=1)
    s = generate_dataset(params, pipe=setup["pipe"], progress=False, _die_at=(1, str(marker)))
    assert marker.is_file(), "the fault was not injected"
    assert "warning: a post-processing worker was killed; its pool is restarted (1 of 3)" in capsys.readouterr().err
    assert s["generated_now"] == N and s["written"] + s["rejected"] == N
    assert not list(out.rglob("*.tmp"))
    assert _files(out) == _files(setup["ref"])


def test_a_job_that_always_kills_its_worker_ends_in_one_line():
    """A sample that kills every worker it runs in (too big for memory): after the pool's restarts, one line."""
    pool = make_pool(1)
    try:
        with pytest.raises(WorkersKilledError, match=r"^a post-processing worker was killed 4 times .*lower dataset\.workers "
                                                     r"\(now 1; 0 post-processes in the main process\).*re-run to resume$") as e:
            pool.submit(signal.raise_signal, signal.SIGKILL).result()
        assert isinstance(e.value, UserError) and "\n" not in str(e.value)  # 'dmutils generate' prints it as its one line, exit 2
    finally:
        pool.shutdown()
