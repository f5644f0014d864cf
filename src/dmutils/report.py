"""``index.html`` of a run: one page that links every executed notebook and shows the key results.

Self-contained (inline CSS, no scripts, no CDNs) so it opens offline; figures are the PNGs in
``figures/`` next to it, each linking its PDF. Built from the same dict as ``run.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

from dmutils.paths import atomic_write_bytes

TABLE_MAX_ROWS = 40

_TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dmutils report: {{ run.name }}</title>
<style>
 body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; max-width: 1100px; margin: 2em auto; padding: 0 1em; }
 h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
 .meta { color: #555; } code, pre { font: 13px/1.4 Menlo, Consolas, monospace; }
 pre { background: #f6f8fa; padding: .8em; overflow: auto; }
 table { border-collapse: collapse; margin: .5em 0; } th, td { border-bottom: 1px solid #e5e5e5; padding: .3em .7em; text-align: left; vertical-align: top; }
 th { background: #fafafa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
 .badge { display: inline-block; padding: .05em .5em; border-radius: .6em; font-size: 12px; font-weight: 600; color: #fff; background: #888; }
 .ok { background: #2e7d32; } .failed { background: #c62828; } .placeholder { background: #ef6c00; } .running { background: #1565c0; }
 .not-run, .interrupted { background: #9e9e9e; }
 .error { color: #c62828; white-space: pre-wrap; } .note { color: #555; } .indicative { background: #8d6e63; }
 figure { display: inline-block; margin: .6em 1.2em .6em 0; max-width: 520px; vertical-align: top; }
 figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 13px; color: #444; }
 .tbl { margin-bottom: 1.2em; } .tbl table { font-size: 13px; }
</style>
</head>
<body>
<h1>Report: {{ run.name }}</h1>
<p class="meta">
 <span class="badge {{ run.status | css }}">{{ run.status }}</span>
 {% for status, group in run.notebooks | groupby("status") %}{{ group | length }} {{ status }}{{ ", " if not loop.last }}{% endfor %}
 &middot; started {{ run.started }}{% if run.seconds is not none %} &middot; {{ "%.1f" | format(run.seconds) }} s{% endif %}
 &middot; seed {{ run.seed }} &middot; params <code>{{ run.params_file or "defaults" }}</code>
 {% if run.overrides %}&middot; overrides <code>{{ run.overrides | join(" ") }}</code>{% endif %}
 &middot; commit <code>{{ (run.git.commit or "unknown")[:10] }}</code>{% if run.git.dirty %} (with uncommitted changes){% endif %}
</p>
{% if run.message %}<p class="error">{{ run.message }}</p>{% endif %}

<h2>Notebooks</h2>
<table>
<tr><th>notebook</th><th>status</th><th>time</th><th>files</th><th>notes</th></tr>
{% for nb in run.notebooks %}
<tr>
 <td>{{ nb.name }}</td>
 <td><span class="badge {{ nb.status | css }}">{{ nb.status }}</span></td>
 <td class="num">{% if nb.seconds is not none %}{{ "%.1f" | format(nb.seconds) }} s{% endif %}</td>
 <td>{% if nb.html %}<a href="{{ nb.html }}">html</a>{% endif %} {% if nb.ipynb %}<a href="{{ nb.ipynb }}">ipynb</a>{% endif %}</td>
 <td>{% if nb.error %}<span class="error">{% if nb.error.cell is not none %}cell {{ nb.error.cell }}: {% endif %}{{ nb.error.ename }}: {{ nb.error.evalue }}</span>{% endif %}
     {% if nb.note %}<span class="note">{{ nb.note }}</span>{% endif %}</td>
</tr>
{% endfor %}
</table>

{% if conclusions %}
<h2>Conclusions</h2>
<p class="note">Computed from each notebook's tables when it ran; no figure here is typed by hand.</p>
{% for c in conclusions %}
<div class="conclusions"><p><b>{{ c.notebook }}</b></p>
<ul>{% for s in c.sentences %}<li>{{ s }}</li>{% endfor %}</ul></div>
{% endfor %}
{% endif %}

<h2>Key figures</h2>
{% for f in key_figures %}
<figure>
 <a href="{{ f.files.pdf or f.files.png }}"><img src="{{ f.files.png }}" alt="{{ f.name }}"></a>
 <figcaption><b>{{ f.name }}</b> <span class="note">({{ f.notebook }})</span>{% if f.caption %}: {{ f.caption }}{% endif %}
 {% if f.indicative %}<br><span class="badge indicative">indicative</span> <span class="note">{{ f.indicative }}</span>{% endif %}</figcaption>
</figure>
{% else %}<p class="note">No key figures yet.</p>{% endfor %}

<h2>Key tables</h2>
{% for t in key_tables %}
<div class="tbl"><p><b>{{ t.name }}</b> <span class="note">({{ t.notebook }}, <a href="{{ t.files.csv }}">csv</a>)</span>{% if t.caption %}: {{ t.caption }}{% endif %}
 {% if t.indicative %}<br><span class="badge indicative">indicative</span> <span class="note">{{ t.indicative }}</span>{% endif %}</p>
{{ t.html | safe }}</div>
{% else %}<p class="note">No key tables yet.</p>{% endfor %}

{% if others %}
<h2>All other outputs</h2>
<ul>
{% for a in others %}<li>{{ a.kind }} <a href="{{ a.files.png or a.files.csv }}">{{ a.name }}</a>{% if a.files.pdf %} (<a href="{{ a.files.pdf }}">pdf</a>){% endif %}
 <span class="note">({{ a.notebook }})</span>{% if a.caption %}: {{ a.caption }}{% endif %}</li>
{% endfor %}
</ul>
{% endif %}

<h2>Run metadata</h2>
<p>Command: <code>{{ run.command }}</code> &middot; kernel <code>{{ run.kernel }}</code> &middot; params digest <code>{{ run.params_digest }}</code>
 &middot; <a href="run.json">run.json</a></p>
<table>
<tr><th>package</th><th>version</th></tr>
{% for k, v in run.versions.items() %}<tr><td>{{ k }}</td><td>{{ v or "not installed" }}</td></tr>
{% endfor %}
</table>
<details><summary>Resolved params (YAML)</summary>
<pre>{{ params_yaml }}</pre>
</details>
</body>
</html>
"""


def _env() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["css"] = lambda s: str(s).replace(" ", "-")
    return env


def _latest(artifacts: list[dict[str, Any]], notebook: str) -> list[dict[str, Any]]:
    """Figures/tables of one notebook, the last save of each name winning (re-runs overwrite)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for a in artifacts:
        if a.get("kind") in ("figure", "table"):
            out[(a["kind"], a["name"])] = {**a, "notebook": notebook}
    return list(out.values())


def _table_html(run_dir: Path, table: dict[str, Any]) -> str:
    import pandas as pd

    path = run_dir / table["files"]["csv"]
    if not path.is_file():
        return f"<p class='error'>missing file {table['files']['csv']}</p>"
    df = pd.read_csv(path)
    return df.to_html(index=False, max_rows=TABLE_MAX_ROWS, float_format=lambda x: f"{x:.4g}", border=0)


def render_index(run: dict[str, Any], run_dir: Path) -> str:
    """The index page as a string."""
    outputs = [a for nb in run.get("notebooks", []) for a in _latest(nb.get("artifacts", []), nb["name"])]
    key_figures = [a for a in outputs if a["kind"] == "figure" and a.get("key")]
    key_tables = [{**a, "html": _table_html(run_dir, a)} for a in outputs if a["kind"] == "table" and a.get("key")]
    others = [a for a in outputs if not a.get("key")]
    conclusions = [{"notebook": nb["name"], "sentences": c[-1]["sentences"]} for nb in run.get("notebooks", [])
                   if (c := [a for a in nb.get("artifacts", []) if a.get("kind") == "conclusions"])]
    params_yaml = yaml.safe_dump(run.get("params", {}), sort_keys=False, default_flow_style=None, width=110)
    return _env().from_string(_TEMPLATE).render(run=run, key_figures=key_figures, key_tables=key_tables,
                                                  others=others, conclusions=conclusions, params_yaml=params_yaml)


def write_index(run: dict[str, Any], run_dir: Path) -> Path:
    """Write ``<run_dir>/index.html`` atomically and return its path."""
    path = Path(run_dir) / "index.html"
    atomic_write_bytes(path, render_index(run, Path(run_dir)).encode())
    return path


EXAMPLE_FIGURES = ("attention_images", "attention_per_resolution_0", "iou_vs_threshold", "dataset_samples", "segmenter_per_class_iou", "ablations",
                   "model_families_scores", "model_families_examples")
EXAMPLE_TABLES = ("segmenter_headline", "ablations", "model_families_headline")


def export_example(run_dir: str | Path, out_dir: str | Path, figures: tuple[str, ...] = EXAMPLE_FIGURES,
                   tables: tuple[str, ...] = EXAMPLE_TABLES, max_side: int = 1000, max_bytes: int = 200_000) -> list[Path]:
    """Small copies of a run's key figures (PNG, longest side <= ``max_side``, < ``max_bytes``) and tables (CSV),
    for the example report committed under ``reports/example/``; returns the files written (a partial run's missing
    figures and tables are skipped)."""
    from PIL import Image

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in figures:
        if not (run_dir / "figures" / f"{name}.png").is_file():
            continue
        image = Image.open(run_dir / "figures" / f"{name}.png").convert("RGB")
        side = max_side
        while True:
            small = image.copy()
            small.thumbnail((side, side), Image.LANCZOS)
            small = small.quantize(256, method=Image.Quantize.MEDIANCUT)  # palette PNG: figures have few colours
            path = out_dir / f"{name}.png"
            small.save(path, optimize=True)
            if path.stat().st_size < max_bytes or side < 300:
                break
            side = int(side * 0.8)
        written.append(path)
    for name in tables:
        if not (run_dir / "tables" / f"{name}.csv").is_file():
            continue
        path = out_dir / f"{name}.csv"
        path.write_bytes((run_dir / "tables" / f"{name}.csv").read_bytes())
        written.append(path)
    return written
