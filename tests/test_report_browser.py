"""The report's index.html in a real browser: it loads, every figure decodes, no script errors.

report.py writes a page without scripts; the test serves a copy of it with a small probe added
(an error trap first in <head>, and on ``load`` a ``<pre id="probe">`` with each image's
naturalWidth and the errors caught), loads it via file:// in headless chromium and reads the probe
back from ``--dump-dom``. A second page with a missing figure must be caught, so the check can fail.
Without chromium the tests skip on a developer's machine and fail under CI (the environment variable ``CI`` set, as
CI services do: ``CI=true``), where a skip would pass a check that never ran.
"""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from dmutils import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
MISSING = "chromium is not on PATH (Debian: apt-get install -y chromium; .ci/run installs it)"


@pytest.fixture(autouse=True)
def _chromium():
    """Skip without chromium, except under CI, where its absence is a failure."""
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail(f"{MISSING}; CI={os.environ['CI']} is set, so this test must run, not skip")
        pytest.skip(MISSING)

TRAP = "<script>window.__errors=[];window.addEventListener('error',e=>window.__errors.push(String(e.message||e.type)));</script>"
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute('src'), w: i.naturalWidth}));
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({title: document.title, images: imgs, errors: window.__errors});
  document.body.appendChild(pre);
});</script>"""


def fabricated_run(run_dir, figure_names):
    """A run record as the runner writes it, with real PNG/CSV files for the figures that exist."""
    (run_dir / "figures").mkdir(parents=True)
    (run_dir / "tables").mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(figure_names):
        if name != "missing":
            Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(run_dir / "figures" / f"{name}.png")
    (run_dir / "tables" / "scores.csv").write_text("variant,miou\nbaseline,0.5\n")
    artifacts = [{"kind": "figure", "name": n, "key": True, "caption": f"figure {n}",
                  "files": {"png": f"figures/{n}.png", "pdf": f"figures/{n}.pdf"}} for n in figure_names]
    artifacts.append({"kind": "table", "name": "scores", "key": True, "caption": "scores", "files": {"csv": "tables/scores.csv"}})
    return {"name": "browser", "status": "ok", "message": None, "started": "2026-01-01T00:00:00", "seconds": 1.0,
            "command": "dmutils run x.yaml", "params_file": "x.yaml", "overrides": [], "seed": 0, "params_digest": "abc",
            "kernel": "python3", "run_dir": str(run_dir), "git": {"commit": "0" * 40, "dirty": False},
            "versions": {"python": "3.11"}, "params": {"run": {"name": "browser"}},
            "notebooks": [{"name": "05_ablations", "status": "ok", "seconds": 1.0, "ipynb": None, "html": None,
                           "error": None, "note": None, "artifacts": artifacts}]}


def load_in_browser(index, tmp_path):
    """The probe's findings for ``index`` (a test-local copy with the probe is what the browser opens)."""
    html = index.read_text()
    assert "<script" not in html.lower(), "report.py's page is meant to be script-free"
    probed = index.with_name("index_probe.html")
    probed.write_text(html.replace("<head>", "<head>" + TRAP, 1).replace("</body>", PROBE + "</body>", 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-extensions",
           "--no-first-run", "--disable-sync", "--mute-audio", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    match = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout, re.S)
    assert match, f"the page did not finish loading (rc {out.returncode}); stderr tail: {out.stderr[-800:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def test_index_loads_with_every_figure_and_no_script_errors(tmp_path):
    names = ["ablations", "iou_vs_threshold"]
    run_dir = tmp_path / "ok"
    index = report.write_index(fabricated_run(run_dir, names), run_dir)
    found = load_in_browser(index, tmp_path)
    assert found["title"] == "dmutils report: browser"
    assert sorted(i["src"] for i in found["images"]) == sorted(f"figures/{n}.png" for n in names)
    assert all(i["w"] == 30 for i in found["images"]), found["images"]
    assert found["errors"] == []


def test_missing_figure_is_caught(tmp_path):
    run_dir = tmp_path / "broken"
    index = report.write_index(fabricated_run(run_dir, ["ablations", "missing"]), run_dir)
    widths = {i["src"]: i["w"] for i in load_in_browser(index, tmp_path)["images"]}
    assert widths["figures/ablations.png"] == 30 and widths["figures/missing.png"] == 0
