"""Every command's typical mistakes end in exit code 2 and one line on stderr naming the problem, never a traceback."""
import sys
from pathlib import Path

import pytest
import yaml

from dmutils import commands as cli
from dmutils.config import load_params
from dmutils.data import voc
from dmutils.data.toyworld import write_real_splits

pytestmark = pytest.mark.usefixtures("one_thread")


def fails(capsys, *argv: str) -> str:
    """Run ``dmutils argv`` in-process; assert exit 2 and a single stderr line, and return that line."""
    rc = cli.main(list(argv))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dmutils {argv[0]}: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Toy real splits in our VOC layout, 16 px."""
    return write_real_splits(tmp_path_factory.mktemp("real") / "toy", {"train": 4, "val": 2, "test": 2}, image_size=16)


@pytest.fixture
def params_file(tmp_path, real):
    """A params file on the toy set-up whose outputs and real data live in tmp_path."""
    def make(**sections) -> Path:
        data = {"extends": str(Path("params/toy.yaml").resolve()), "run": {"reports_dir": str(tmp_path / "reports")},
                "dataset": {"out_dir": str(tmp_path / "synthetic")}, "real": {"kind": "voc_layout", "root": str(real)},
                "train": {"steps": 1, "batch_size": 2, "image_size": 16, "cache": False,
                          "config": {"hidden_sizes": [8, 8, 8, 8], "depths": [1, 1, 1, 1], "decoder_hidden_size": 8,
                                     "num_attention_heads": [1, 1, 1, 1]}}}
        for k, v in sections.items():
            data[k] = {**data.get(k, {}), **v}
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(data))
        return path
    return make


@pytest.fixture
def a_file(tmp_path) -> Path:
    """A plain file: any output folder under it cannot be made (portable, unlike permissions when run as root)."""
    path = tmp_path / "a-file"
    path.write_text("x")
    return path


# -- preflight -------------------------------------------------------------------------------------------
def test_check_passes_on_toy(capsys):
    assert cli.main(["check", "params/toy.yaml"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["ok"] * 5


def test_check_on_the_voc_set_up_names_the_model_and_the_data(capsys):
    params = load_params("params/voc_sd15.yaml")
    rc = cli.main(["check", "params/voc_sd15.yaml", "--set", f"model.path={params.model.path}-not-cached",
                   "--set", f"train.backbone={params.train.backbone}-not-cached"])
    captured = capsys.readouterr()
    assert rc == 2 and "Traceback" not in captured.err
    errors = [line.strip() for line in captured.out.splitlines() if line.strip().startswith("error:")]
    assert len(errors) == 3
    assert f"hf download {params.model.path}-not-cached --local-dir models/" in errors[0] and "--set model.path=models/" in errors[0]
    assert f"hf download {params.train.backbone}-not-cached" in errors[1] and "--set train.backbone=models/" in errors[1]
    assert "real.root" in errors[2] and "VOC" in errors[2]
    assert captured.err.strip() == "dmutils check: 3 check(s) failed: model, checkpoints, real data"


# -- generate / remask / merge-shards / splice ----------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_generate_into_proc(capsys):
    line = fails(capsys, "generate", "params/toy.yaml", "--set", "dataset.out_dir=/proc/x")
    assert "dataset.out_dir /proc/x is not writable" in line


def test_generate_mistakes(capsys, params_file, a_file, tmp_path):
    assert "is a file, not a folder" in fails(capsys, "generate", str(params_file(dataset={"out_dir": str(a_file / "ds")})))
    assert "no such folder" in fails(capsys, "generate", str(params_file(model={"path": str(tmp_path / "no-model")})))
    assert "params file not found" in fails(capsys, "generate", str(tmp_path / "missing.yaml"))
    assert "masks.tua" in fails(capsys, "generate", str(params_file()), "--set", "masks.tua=1")
    assert "--shard" in fails(capsys, "generate", str(params_file()), "--shard", "4/4")


def test_dataset_commands_on_missing_or_wrong_folders(capsys, real, a_file, tmp_path):
    assert "no dataset.json" in fails(capsys, "remask", str(tmp_path / "none"))
    assert "not written by 'dmutils generate'" in fails(capsys, "remask", str(real))  # real splits have no generation params
    assert "no shards to merge" in fails(capsys, "merge-shards", str(tmp_path / "none"))
    assert "no dataset.json" in fails(capsys, "splice", str(tmp_path / "none"), "--out", str(tmp_path / "s"))
    assert "--out" in fails(capsys, "splice", str(real), "--out", str(a_file / "s"), "--set", "dataset.splice.grids=[[1,2]]")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/dataset.json").write_text("{half")
    assert "dataset.json is not valid JSON" in fails(capsys, "splice", str(tmp_path / "broken"), "--out", str(tmp_path / "s"))
    assert "does not exist" in fails(capsys, "preview", str(tmp_path / "none"))
    assert "no dataset.json" in fails(capsys, "preview", str(a_file.parent))
    assert "dataset.json is not valid JSON" in fails(capsys, "preview", str(tmp_path / "broken"))
    assert "--out" in fails(capsys, "preview", str(real), "--out", str(a_file / "p"))


def test_splice_names_a_corrupt_label(capsys, real, tmp_path):
    import shutil

    copy = Path(shutil.copytree(real, tmp_path / "copy"))
    bad = copy / voc.LABELS / f"{voc.read_split(copy, 'train')[0]}.png"
    bad.write_bytes(b"\x89PNG broken")
    line = fails(capsys, "splice", str(copy), "--out", str(tmp_path / "s"), "--set", "dataset.splice.grids=[[1,2]]",
                 "--no-progress")
    assert str(bad) in line and "cannot read label" in line


# -- toy world and toy model ---------------------------------------------------------------------------
def test_toy_commands_into_an_unwritable_folder(capsys, a_file):
    assert "render-toy OUT" in fails(capsys, "render-toy", str(a_file / "toy"))
    assert "--out" in fails(capsys, "train-toy-model", "--out", str(a_file / "model"), "--steps", "1")


# -- train / evaluate ---------------------------------------------------------------------------------
def test_train_mistakes(capsys, params_file, a_file, tmp_path):
    assert "no synthetic dataset" in fails(capsys, "train", str(params_file()), "--data", "synthetic", "--no-eval")
    assert "--out" in fails(capsys, "train", str(params_file()), "--out", str(a_file / "seg"))
    line = fails(capsys, "train", str(params_file(real={"kind": "voc", "root": str(tmp_path / "VOCdevkit")})))
    assert "real.root" in line and "VOC" in line
    line = fails(capsys, "train", str(params_file(real={"test_split": "tst"})), "--out", str(tmp_path / "seg"))
    assert "tst.txt not found" in line and "real.test_split" in line
    line = fails(capsys, "train", str(params_file(train={"pretrained": str(tmp_path / "no-backbone")})), "--out", str(tmp_path / "seg"))
    assert "train.pretrained" in line and "no such folder" in line
    assert "nothing to resume" in fails(capsys, "train", str(params_file()), "--out", str(tmp_path / "seg"), "--resume", "--no-eval")


def test_train_names_a_corrupt_image(capsys, params_file, real, tmp_path):
    import shutil

    copy = Path(shutil.copytree(real, tmp_path / "copy"))
    bad = copy / voc.IMAGES / f"{voc.read_split(copy, 'train')[1]}.jpg"  # not the first: the preflight reads only that one
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    line = fails(capsys, "train", str(params_file(real={"root": str(copy)}, train={"cache": True})), "--out",
                 str(tmp_path / "seg"), "--no-eval")
    assert str(bad) in line and "cannot read image" in line


def test_evaluate_mistakes(capsys, params_file, tmp_path):
    assert "segmenter.json not found" in fails(capsys, "evaluate", "/no/such/path", "params/toy.yaml")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/segmenter.json").write_text("{")
    assert "not valid JSON" in fails(capsys, "evaluate", str(tmp_path / "ckpt"), str(params_file()))


def test_run_with_an_unwritable_reports_folder(capsys, params_file, a_file):
    line = fails(capsys, "run", str(params_file(run={"reports_dir": str(a_file / "reports")})))
    assert "run.reports_dir" in line


def test_os_errors_no_check_foresaw_are_one_line(capsys, monkeypatch, tmp_path):
    """The last resort in cli.main: an OSError with a file name (a disk filling up mid-run) is one line."""
    from dmutils.commands import render_toy

    def full(*a, **k):
        raise OSError(28, "No space left on device", "/data/x.png")

    monkeypatch.setattr(render_toy, "write_real_splits", full)
    line = fails(capsys, "render-toy", str(tmp_path / "toy"))
    assert "No space left on device: /data/x.png" in line



def test_run_only_warns_about_real_data_it_may_not_need(capsys, params_file, tmp_path, monkeypatch):
    """A full run stops on missing real data; with --only (e.g. 01, attention only) that is a warning and the run goes on."""
    from dmutils import runner

    monkeypatch.setattr(runner, "_execute", lambda src, entry, *a: entry.update(status="ok", seconds=0.0))  # no kernel
    bad = params_file(real={"kind": "voc", "root": str(tmp_path / "VOCdevkit")})
    assert "real.root" in fails(capsys, "run", str(bad))
    assert cli.main(["run", str(bad), "--only", "01"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: real.root") and "Traceback" not in err
