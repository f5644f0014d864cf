"""The random-weight test models are the same bytes in every process: the notebook tests' datasets depend on it
(a tokenizer numbered differently per process once gave 2 usable samples in one run and 5 in the next)."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

BUILD = "import sys; from dmutils.testing.sd import save_tiny_sd15; save_tiny_sd15(sys.argv[1])"


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_save_tiny_sd15_writes_the_same_files_in_two_processes(tmp_path):
    procs = []
    for hash_seed in ("1", "2"):  # different str hashes too, so set/dict order cannot hide behind one seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path / hash_seed)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    first, second = _digests(tmp_path / "1"), _digests(tmp_path / "2")
    assert {"tokenizer/tokenizer.json", "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"} <= set(first)
    assert first == second
