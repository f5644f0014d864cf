"""``dmutils run PARAMS [--only 01,03] [--set k=v ...]``: the study notebooks, run with papermill, as one report.

Params are loaded and validated first, the notebook list is checked and the preflight
(:mod:`dmutils.preflight`: model files, data, output folders, device) runs, so a typo or a missing
download costs a one-line error, not a kernel start. Each notebook receives ``params_file``, ``overrides`` and
``run_dir`` in its tagged parameters cell and runs with its own folder as working dir (as in
JupyterLab). Everything lands in ``reports/<run.name>/``::

    index.html  run.json  artifacts.jsonl
    notebooks/<name>.ipynb  notebooks/<name>.html     executed notebook and its HTML export
    figures/<fig>.png|pdf  tables/<table>.csv          written by the notebooks through dmutils.nb

``run.json`` and ``index.html`` are rewritten after every notebook, so a failed or interrupted
run leaves a report of what it did. The first failing notebook stops the run.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from dmutils import nb
from dmutils.config import Params, load_params
from dmutils.errors import ParamsError
from dmutils.paths import atomic_write_bytes
from dmutils.preflight import preflight
from dmutils.provenance import git_info, package_versions

KERNEL = "dmutils"
FALLBACK_KERNEL = "python3"  # ipykernel's own spec: always this interpreter


# ---------------------------------------------------------------------------------------------
# Checks done before any compute
# ---------------------------------------------------------------------------------------------
def resolve_notebooks(params: Params) -> list[Path]:
    """``run.notebooks`` as existing .ipynb paths, in order; names are looked up in ``run.notebooks_dir``."""
    folder = params.resolve_path(params.run.notebooks_dir)
    paths = []
    for entry in params.run.notebooks:
        p = Path(entry if entry.endswith(".ipynb") else f"{entry}.ipynb").expanduser()
        paths.append(p if p.is_absolute() else folder / p)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        have = sorted(p.stem for p in folder.glob("*.ipynb")) if folder.is_dir() else []
        raise ParamsError(f"run.notebooks lists notebooks that do not exist: {', '.join(missing)}; "
                          f"available in {folder}: {', '.join(have) or 'none'}")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ParamsError(f"run.notebooks names a notebook twice (outputs are named by file stem): {stems}")
    return paths


def select(paths: list[Path], only: str | None) -> list[Path]:
    """The notebooks whose stems start with one of the comma-separated prefixes (all when None)."""
    if not only:
        return paths
    prefixes = [s.strip() for s in only.split(",") if s.strip()]
    unmatched = [pre for pre in prefixes if not any(p.stem.startswith(pre) for p in paths)]
    if not prefixes or unmatched:
        raise ParamsError(f"--only {only!r}: {', '.join(map(repr, unmatched)) or 'no prefix'} matches no notebook; "
                          f"the sequence is {', '.join(p.stem for p in paths)}")
    return [p for p in paths if any(p.stem.startswith(pre) for pre in prefixes)]


def choose_kernel(requested: str | None = None) -> str:
    """The project's kernel when registered (``make setup`` does it), else this interpreter's."""
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    specs = ksm.find_kernel_specs()
    if requested:
        if requested not in specs:
            raise ParamsError(f"Jupyter kernel {requested!r} is not installed; installed: {', '.join(sorted(specs)) or 'none'}")
        return requested
    if KERNEL in specs:
        exe = Path(ksm.get_kernel_spec(KERNEL).argv[0])
        if exe.is_absolute() and exe.resolve() != Path(sys.executable).resolve():
            print(f"warning: kernel '{KERNEL}' runs {exe}, not this interpreter ({sys.executable}); "
                  f"re-register it with `make setup` or pass --kernel {FALLBACK_KERNEL}", file=sys.stderr)
        return KERNEL
    if FALLBACK_KERNEL in specs:
        return FALLBACK_KERNEL
    raise ParamsError(f"no Jupyter kernel found: run `make setup`, or "
                      f"`python -m ipykernel install --sys-prefix --name {KERNEL} --display-name 'Python (dmutils)'`")


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def run(params_file: str | Path | None = None, overrides: list[str] | None = None, only: str | None = None,
        kernel: str | None = None, command: str | None = None) -> dict[str, Any]:
    """Execute the notebook sequence; return the run record (the content of ``run.json``).

    Raises :class:`ParamsError` before anything runs when the params, the notebook list, ``only``,
    the kernel or a preflight check (:func:`dmutils.preflight.preflight`) are wrong. A failing notebook does not raise: the record's ``status`` is
    ``'failed'`` and its ``message`` names the notebook and the cell's error.
    """
    overrides = list(overrides or [])
    path = nb.find_params_file(params_file)
    params = load_params(path, overrides)
    sequence = resolve_notebooks(params)
    chosen = select(sequence, only)
    kernel = choose_kernel(kernel)
    # model files, checkpoints, real data, output folders and disk, device: before any kernel starts. With --only the
    # chosen notebooks may not read the real data nor load the segmenter's pretrained weights (01-03 do neither), so
    # those problems are warnings then.
    preflight(params, warn_only=("real data", "checkpoints") if only else ())

    run_dir = nb.default_run_dir(params)
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    (run_dir / nb.ARTIFACTS).unlink(missing_ok=True)  # this run's log starts empty
    record: dict[str, Any] = {
        "name": params.run.name, "status": "running", "message": None,
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "seconds": None,
        "command": command or f"dmutils run {path or ''}".strip(), "params_file": str(path) if path else None,
        "overrides": overrides, "seed": params.run.seed, "params_digest": params.digest(), "kernel": kernel,
        "run_dir": str(run_dir), "git": git_info(), "versions": package_versions(),
        "notebooks": [{"name": p.stem, "source": str(p), "status": "queued" if p in chosen else "not run",
                       "seconds": None, "ipynb": None, "html": None, "error": None,
                       "note": None if p in chosen else "not selected by --only", "artifacts": []} for p in sequence],
        "params": params.model_dump(mode="json"),
    }
    entries = {e["source"]: e for e in record["notebooks"]}
    t_run = time.perf_counter()
    try:
        for i, src in enumerate(chosen, 1):
            entry = entries[str(src)]
            print(f"[{i}/{len(chosen)}] {src.stem} ...", flush=True)
            entry["status"] = "running"
            _write(record, run_dir)
            _execute(src, entry, run_dir, path, overrides, kernel)
            print(f"[{i}/{len(chosen)}] {src.stem}: {entry['status']} in {entry['seconds']:.1f} s", flush=True)
            if entry["error"]:
                err = entry["error"]
                where = f" in cell In [{err['cell']}]" if err["cell"] is not None else ""
                see = f" (executed notebook with the traceback: {run_dir / entry['ipynb']})" if entry["ipynb"] else ""
                record["status"] = "failed"
                record["message"] = f"notebook {src.stem} failed{where}: {err['ename']}: {err['evalue']}{see}"
                break
        else:
            record["status"] = "ok"
    finally:  # also on Ctrl-C: the report shows how far the run got
        if record["status"] == "running":
            record["status"], record["message"] = "interrupted", "the run stopped before the end (interrupted)"
        for e in record["notebooks"]:
            if e["status"] in ("queued", "running"):
                e["status"] = "interrupted" if e["status"] == "running" else "not run"
                e["note"] = e["note"] or ("not run: an earlier notebook failed" if record["status"] == "failed" else None)
        record["seconds"] = round(time.perf_counter() - t_run, 2)
        _write(record, run_dir)
    return record


def kernel_options(kernel_log: Path | None = None) -> dict[str, Any]:
    """papermill keyword arguments that start each kernel with CurveZMQ keys provisioned by the kernel manager,
    and with ``kernel_log`` its stderr written to that file instead of the terminal.

    ipykernel >= 7.4 warns "Kernel is running over TCP without encryption" on every start otherwise.
    ``KernelManager.transport_encryption = "auto"`` (jupyter_client >= 8.9) encrypts when the kernel spec
    declares ``supported_encryption: curve`` (ipykernel's specs do) and libzmq has CURVE; else nothing changes.
    The kernel's own log goes to a file because on Ctrl-C it logs a traceback of a reply it can no longer send (its
    manager has closed the sockets): the user's terminal keeps the one line that says what happened.
    """
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    config = {}
    if KernelManager.class_traits().get("transport_encryption") and zmq.has("curve"):
        config["KernelManager"] = {"transport_encryption": "auto"}
    options: dict[str, Any] = {}
    if kernel_log is not None:
        config["LoggedKernelManager"] = {"stderr_file": str(kernel_log)}
        options["kernel_manager_class"] = _logged_kernel_manager()
    return {**options, "config": Config(config)} if config else options


def _logged_kernel_manager() -> type:
    """An AsyncKernelManager (nbclient's default) that starts its kernel with stderr appended to ``stderr_file``."""
    from jupyter_client import AsyncKernelManager
    from traitlets import Unicode

    class LoggedKernelManager(AsyncKernelManager):
        stderr_file = Unicode("", config=True, help="the file the kernel's stderr is appended to")

        async def start_kernel(self, **kw: Any) -> None:
            if not self.stderr_file:
                return await super().start_kernel(**kw)
            Path(self.stderr_file).parent.mkdir(parents=True, exist_ok=True)
            with open(self.stderr_file, "ab") as log:  # the kernel keeps its own copy of the descriptor
                return await super().start_kernel(stderr=log, **kw)

    return LoggedKernelManager


def _execute(src: Path, entry: dict[str, Any], run_dir: Path, params_file: Path | None,
             overrides: list[str], kernel: str) -> None:
    """Run one notebook with papermill, export it to HTML, file its artifacts under it."""
    import papermill as pm

    out = run_dir / "notebooks" / src.name
    kernel_log = out.with_suffix(".kernel.log")
    kernel_log.unlink(missing_ok=True)
    before = len(nb.read_artifacts(run_dir))
    parameters = {"params_file": str(params_file) if params_file else "", "overrides": overrides, "run_dir": str(run_dir)}
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(out), parameters=parameters, kernel_name=kernel, cwd=str(src.parent),
                            progress_bar=sys.stderr.isatty(), log_output=False, **kernel_options(kernel_log))
    except pm.PapermillExecutionError as e:
        entry["error"] = {"cell": e.exec_count, "ename": e.ename, "evalue": e.evalue}
    except Exception as e:  # the kernel died or would not start: still a failure of this notebook
        entry["error"] = {"cell": None, "ename": type(e).__name__, "evalue": str(e)}
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    if kernel_log.is_file() and kernel_log.stat().st_size:
        entry["kernel_log"] = kernel_log.relative_to(run_dir).as_posix()
    else:
        kernel_log.unlink(missing_ok=True)
    entry["artifacts"] = nb.read_artifacts(run_dir)[before:]
    if out.is_file():
        entry["ipynb"] = out.relative_to(run_dir).as_posix()
        html = _export_html(out)
        entry["html"] = html.relative_to(run_dir).as_posix() if html else None
    placeholder = [a for a in entry["artifacts"] if a.get("kind") == "status" and a.get("status") == "placeholder"]
    entry["status"] = "failed" if entry["error"] else "placeholder" if placeholder else "ok"
    if placeholder:
        entry["note"] = placeholder[-1].get("note")


# nbconvert's lab template without its CDN scripts (require.js, MathJax, Mermaid, widget managers), so that
# exports open on offline machines without hanging on unreachable hosts; CSS is inlined by the template and
# images by ``embed_images``. LaTeX in markdown then shows as source: the study notebooks use none.
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def offline_html(ipynb: Path) -> str:
    """An executed notebook as one self-contained HTML page (no network requests)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_loaders=[DictLoader({"dmutils_offline.html.j2": OFFLINE_TEMPLATE})],
                            template_file="dmutils_offline.html.j2", embed_images=True)
    body, _ = exporter.from_notebook_node(nbformat.read(ipynb, as_version=4))
    return body


def _export_html(ipynb: Path) -> Path | None:
    """HTML of an executed notebook next to it (:func:`offline_html`); None, with a warning, if export fails."""
    try:
        body = offline_html(ipynb)
    except Exception as e:  # a report without one HTML export beats no report
        print(f"warning: HTML export of {ipynb.name} failed: {e}", file=sys.stderr)
        return None
    html = ipynb.with_suffix(".html")
    atomic_write_bytes(html, body.encode())
    return html


def _write(record: dict[str, Any], run_dir: Path) -> None:
    from dmutils.report import write_index

    atomic_write_bytes(run_dir / "run.json", json.dumps(record, indent=2).encode())
    write_index(record, run_dir)
