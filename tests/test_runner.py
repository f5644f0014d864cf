"""``dmutils run``: papermill over a tiny temp notebook sequence, the failure path, the index, nb helpers.

Each executed notebook starts a kernel (seconds), so only six tests execute notebooks; the rest
check what must happen before any kernel starts.
"""
import ast
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from PIL import Image

from dmutils import commands as cli
from dmutils import nb, report, runner
from dmutils.config import load_params
from dmutils.errors import ParamsError
from dmutils.paths import REPO_ROOT
from dmutils.testing.signals import stop_when

REMOTE_RESOURCE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)
PARAMETERS = 'params_file = "../params/toy.yaml"\noverrides = []\nrun_dir = ""'
SETUP = "from dmutils import nb\nctx = nb.setup(params_file, overrides, run_dir, style={style})"
BODIES = {
    "a_ok": """
import matplotlib.pyplot as plt, pandas as pd
fig, ax = plt.subplots()
ax.plot([0, 1], [0, ctx.params.masks.tau])
ctx.save_figure(fig, "line", caption="a <b>line</b> figure", key=True)
ctx.save_table(pd.DataFrame({"tau": [ctx.params.masks.tau], "iou": [0.625]}), "scores", caption="key scores", key=True,
               indicative="only <one> sample")
ctx.save_table(pd.DataFrame({"x": [1]}), "extra")
""",
    "b_placeholder": 'ctx.placeholder("filled by a later issue")',
    "c_fail": 'raise ValueError("boom 42")',
    "d_after": 'open("should_not_run", "w").write("ran")',
    "e_slow": 'import pathlib, time\npathlib.Path(ctx.run_dir, "started").write_text("yes")\ntime.sleep(120)',
}


def make_notebook(path: Path, body: str, style: bool = False) -> Path:
    book = new_notebook(metadata={"kernelspec": {"name": "dmutils", "display_name": "Python (dmutils)", "language": "python"}})
    params_cell = new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]})
    book.cells = [new_markdown_cell(f"# {path.stem}"), params_cell, new_code_cell(SETUP.format(style=style)), new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(book, path)
    return path


@pytest.fixture
def project(tmp_path):
    """A params file whose run.notebooks are temp notebooks and whose reports go to tmp_path."""
    for name, body in BODIES.items():
        make_notebook(tmp_path / "nbs" / f"{name}.ipynb", body, style=name == "a_ok")

    def params(*notebooks: str, **extra) -> Path:
        data = {"extends": str(REPO_ROOT / "params/toy.yaml"),
                "run": {"name": "t", "notebooks": list(notebooks), "notebooks_dir": str(tmp_path / "nbs"),
                        "reports_dir": str(tmp_path / "reports")}, **extra}
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    params.run_dir = tmp_path / "reports" / "t"
    return params


# -- runs that execute notebooks ---------------------------------------------------------------
def test_run_writes_the_full_report(project, capfd):
    rc = cli.main(["run", str(project("a_ok", "b_placeholder")), "--set", "masks.tau=3"])
    out, err = capfd.readouterr()  # file-descriptor level: the kernels' own stderr too
    assert rc == 0, out
    assert "without encryption" not in err  # kernels get CurveZMQ keys from the manager (runner.kernel_options)
    assert "[1/2] a_ok" in out and "[2/2] b_placeholder: placeholder" in out  # progress per notebook
    d = project.run_dir
    for name in ("a_ok", "b_placeholder"):
        assert (d / "notebooks" / f"{name}.ipynb").is_file() and (d / "notebooks" / f"{name}.html").is_file()
    export = (d / "notebooks/a_ok.html").read_text()
    assert "<body" in export and "data:image/png;base64," in export  # the figure is embedded
    assert not REMOTE_RESOURCE.findall(export)  # offline: no script, style sheet or image fetched from the web
    assert Image.open(d / "figures/line.png").info["dpi"] == pytest.approx((200, 200), abs=1)
    assert (d / "figures/line.pdf").read_bytes()[:4] == b"%PDF"
    assert (d / "tables/scores.csv").read_text().splitlines()[1].startswith("3,")  # the override reached the notebook

    run = json.loads((d / "run.json").read_text())
    assert run["status"] == "ok" and run["overrides"] == ["masks.tau=3"] and run["params"]["masks"]["tau"] == 3
    assert [(n["name"], n["status"]) for n in run["notebooks"]] == [("a_ok", "ok"), ("b_placeholder", "placeholder")]
    assert all(n["seconds"] > 0 for n in run["notebooks"])
    assert {"python", "torch", "papermill", "dmutils"} <= set(run["versions"]) and "commit" in run["git"]
    executed = nbformat.read(d / "notebooks/a_ok.ipynb", as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert str(d) in injected.source and "masks.tau=3" in injected.source

    index = (d / "index.html").read_text()
    assert 'src="figures/line.png"' in index and 'href="figures/line.pdf"' in index
    assert "a &lt;b&gt;line&lt;/b&gt; figure" in index  # captions are escaped
    assert "0.625" in index and "key scores" in index  # key table shown as HTML
    assert index.count('class="badge indicative"') == 1 and "only &lt;one&gt; sample" in index  # marked, escaped

    example = report.export_example(d, d / "example", figures=("line",), tables=("scores",), max_side=300, max_bytes=20_000)
    assert [p.name for p in example] == ["line.png", "scores.csv"]
    assert max(Image.open(example[0]).size) <= 300 and example[0].stat().st_size < 20_000
    assert example[1].read_bytes() == (d / "tables/scores.csv").read_bytes()
    assert 'href="tables/extra.csv"' in index  # non-key outputs listed
    assert 'href="notebooks/b_placeholder.html"' in index and "filled by a later issue" in index
    assert "placeholder" in index


def test_failing_notebook_stops_the_run_and_keeps_the_report(project, capsys):
    rc = cli.main(["run", str(project("c_fail", "d_after"))])
    err = capsys.readouterr().err
    assert rc == 1
    line = err.strip().splitlines()[-1]
    assert "c_fail" in line and "ValueError" in line and "boom 42" in line
    d = project.run_dir
    run = json.loads((d / "run.json").read_text())
    assert run["status"] == "failed"
    assert [(n["name"], n["status"]) for n in run["notebooks"]] == [("c_fail", "failed"), ("d_after", "not run")]
    assert run["notebooks"][0]["error"]["ename"] == "ValueError"
    assert not (d.parents[1] / "nbs" / "should_not_run").exists()
    failed = nbformat.read(d / "notebooks/c_fail.ipynb", as_version=4)  # the partial notebook, with the traceback
    assert any(o.get("ename") == "ValueError" for c in failed.cells for o in c.get("outputs", []))
    index = (d / "index.html").read_text()
    assert "boom 42" in index and "not run" in index and 'class="badge failed"' in index


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_cancel_during_run_keeps_the_report_and_says_how_to_resume(project, sig):
    """Ctrl-C or a scheduler's cancel of ``dmutils run`` mid-notebook: exit 130, one line, no traceback; run.json and
    index.html say which notebook was interrupted and which did not run; a re-run of the finished ones works."""
    path, d = project("a_ok", "e_slow", "d_after"), project.run_dir
    code, output = stop_when([sys.executable, "-m", "dmutils", "run", str(path)], (d / "started").is_file, sig, "run")
    assert code == 130 and "Traceback" not in output, output
    assert [x for x in output.splitlines() if "interrupted" in x] == [
        "dmutils run: interrupted; finished work is kept, re-run to resume"], output
    run = json.loads((d / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert [(n["name"], n["status"]) for n in run["notebooks"]] == [("a_ok", "ok"), ("e_slow", "interrupted"),
                                                                     ("d_after", "not run")]
    index = (d / "index.html").read_text()
    assert "interrupted" in index and 'src="figures/line.png"' in index  # the finished notebook's work is shown
    assert not list(d.rglob("*.tmp")) and not (d.parents[1] / "nbs" / "should_not_run").exists()
    assert cli.main(["run", str(project("a_ok"))]) == 0  # the re-run (here of the finished notebook) goes on


def test_plain_papermill_cli_from_another_working_dir(tmp_path):
    """A notebook runs under papermill with a params path relative to the repo root, from any cwd."""
    src = make_notebook(tmp_path / "nb.ipynb", BODIES["b_placeholder"])
    cmd = [sys.executable, "-m", "papermill", str(src), str(tmp_path / "out.ipynb"), "-k", runner.choose_kernel(),
           "-p", "params_file", "params/toy.yaml", "-p", "run_dir", str(tmp_path / "r"), "--no-progress-bar"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [a["status"] for a in nb.read_artifacts(tmp_path / "r")] == ["placeholder"]


# -- errors before any compute -----------------------------------------------------------------
def test_bad_key_is_a_one_line_error_before_any_notebook(project, capsys):
    rc = cli.main(["run", str(project("a_ok", masks={"tua": 2}))])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "masks.tua" in err and "masks.tau" in err
    assert not project.run_dir.exists()


def test_bad_override_type_is_a_one_line_error(project, capsys):
    assert cli.main(["run", str(project("a_ok")), "--set", "masks.threshold=high"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "masks.threshold" in err and "'high'" in err
    assert not project.run_dir.exists()


def test_missing_notebooks_are_named(project):
    params = load_params(project("a_ok", "zz_missing", "yy_gone"))
    with pytest.raises(ParamsError, match="zz_missing.*yy_gone.*available.*a_ok"):
        runner.resolve_notebooks(params)


def test_only_selects_by_prefix():
    paths = [Path(f"/x/{n}.ipynb") for n in ("01_a", "02_b", "03_c", "10_d")]
    assert [p.stem for p in runner.select(paths, "01,03")] == ["01_a", "03_c"]
    assert [p.stem for p in runner.select(paths, " 1 ")] == ["10_d"]
    assert runner.select(paths, None) == paths
    with pytest.raises(ParamsError, match="'07'.*01_a"):
        runner.select(paths, "01,07")


def test_unknown_kernel_is_named():
    with pytest.raises(ParamsError, match="no-such-kernel"):
        runner.choose_kernel("no-such-kernel")


# -- the index page ----------------------------------------------------------------------------
def test_index_is_self_contained_and_escapes(tmp_path):
    run = {"name": "x", "status": "failed", "message": "notebook b failed", "started": "now", "seconds": 1.0,
           "command": "dmutils run", "params_file": None, "overrides": [], "seed": 0, "params_digest": "abc",
           "kernel": "python3", "git": {"commit": None, "dirty": None}, "versions": {"torch": None},
           "params": {"run": {"name": "x"}},
           "notebooks": [
               {"name": "a", "status": "placeholder", "seconds": 1.0, "ipynb": "notebooks/a.ipynb", "html": None,
                "error": None, "note": "later", "artifacts": []},
               {"name": "b", "status": "failed", "seconds": 2.0, "ipynb": "notebooks/b.ipynb", "html": "notebooks/b.html",
                "error": {"cell": 3, "ename": "ValueError", "evalue": "<script>alert(1)</script>"}, "note": None, "artifacts": []},
               {"name": "c", "status": "not run", "seconds": None, "ipynb": None, "html": None, "error": None,
                "note": "not run: an earlier notebook failed", "artifacts": []}]}
    html = report.write_index(run, tmp_path).read_text()
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "http://" not in html and "https://" not in html  # no CDN, nothing from the internet
    assert "placeholder" in html and "not run" in html and "In [" not in html and "cell 3" in html
    assert "No key figures yet" in html


# -- notebook helpers --------------------------------------------------------------------------
def test_setup_defaults_to_reports_of_the_run(tmp_path):
    ctx = nb.setup(REPO_ROOT / "params/toy.yaml", f"run.reports_dir={tmp_path}", "", style=False)
    assert ctx.run_dir == tmp_path / "toy" and ctx.figures_dir.is_dir() and ctx.tables_dir.is_dir()
    assert ctx.overrides == [f"run.reports_dir={tmp_path}"] and ctx.seed == 0
    with pytest.raises(ValueError, match="plain file stem"):
        ctx.save_table(None, "../escape")


def test_params_file_lookup(tmp_path, monkeypatch):
    toy = (REPO_ROOT / "params/toy.yaml").resolve()
    monkeypatch.chdir(tmp_path)
    assert nb.find_params_file("params/toy.yaml") == toy  # repo root
    assert nb.find_params_file("../params/toy.yaml") == toy  # the notebooks' default, from notebooks/
    assert nb.find_params_file("") is None
    (tmp_path / "mine.yaml").write_text("run: {name: mine}\n")
    assert nb.find_params_file("mine.yaml") == tmp_path / "mine.yaml"  # the working dir first
    with pytest.raises(ParamsError, match="nope.yaml.*tried"):
        nb.find_params_file("nope.yaml")


@pytest.mark.parametrize("name", load_params().run.notebooks)
def test_study_notebooks_keep_the_runner_contract(name):
    """Every notebook of the default sequence: tagged parameters cell with the three names, the project kernel."""
    book = nbformat.read(REPO_ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(book)
    assert book.metadata.kernelspec["name"] == "dmutils" and book.metadata.kernelspec["language"] == "python"
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assigned = {t.id: ast.literal_eval(n.value) for n in ast.parse(tagged[0].source).body for t in n.targets}
    assert assigned == {"params_file": "../params/toy.yaml", "overrides": [], "run_dir": ""}
    assert any("nb.setup(params_file, overrides, run_dir" in c.source for c in book.cells if c.cell_type == "code")
