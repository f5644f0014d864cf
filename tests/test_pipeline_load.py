"""Loading a pipeline prints no warnings about parts that are never used (on machines without torchvision,
transformers 5 warned about CLIPImageProcessor and SiglipImageProcessor on every ``dmutils generate``)."""
import os
import subprocess
import sys

from dmutils.paths import REPO_ROOT

# Hides torchvision from this interpreter, as on a fresh `make setup` (nothing in pyproject.toml pulls it in).
HIDE_TORCHVISION = '''
import importlib.metadata as md
import importlib.util

_find_spec, _version = importlib.util.find_spec, md.version

def find_spec(name, package=None):
    return None if name.split(".")[0] == "torchvision" else _find_spec(name, package)

def version(name):
    if name == "torchvision":
        raise md.PackageNotFoundError(name)
    return _version(name)

importlib.util.find_spec, md.version = find_spec, version
'''
LOAD = """
from transformers.utils import is_torchvision_available
assert not is_torchvision_available(), "torchvision is not hidden: this test would prove nothing"
from dmutils.pipeline import load_pipeline
pipe = load_pipeline("models/toy-sd", device="cpu")
print(type(pipe).__name__)
"""


def test_loading_a_pipeline_without_torchvision_prints_no_image_processor_warning(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HIDE_TORCHVISION)
    path = [str(tmp_path), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", LOAD], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "StableDiffusionPipeline"
    assert "ImageProcessor" not in r.stderr and "torchvision" not in r.stderr, r.stderr[-2000:]
