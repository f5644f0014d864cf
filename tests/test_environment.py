"""One list of dependencies: pyproject.toml declares them; environment.yml, the Makefile and CI use it."""
import re
from importlib import metadata

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from dmutils.paths import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PYPROJECT["optional-dependencies"]
ALL = [Requirement(r) for r in PYPROJECT["dependencies"] + [r for reqs in EXTRAS.values() for r in reqs]]
# What the foundation issue asks every set-up to have (distribution names).
REQUIRED = ["diffusers", "transformers", "accelerate", "safetensors", "torch", "pydensecrf2", "papermill", "nbconvert",
            "jupyterlab", "ipykernel", "ipywidgets", "seaborn", "pandas", "torchmetrics", "tqdm", "pyyaml", "pydantic"]


def environment_yml() -> dict:
    return yaml.safe_load((REPO_ROOT / "environment.yml").read_text())


def pip_section(env: dict) -> list[str]:
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip section"
    return sections[0]


def test_environment_yml_installs_the_project_with_every_extra():
    [entry] = pip_section(environment_yml())  # the project only: its dependencies come from pyproject
    m = re.fullmatch(r"-e \.\[([\w,\- ]+)\]", entry.strip())
    assert m, f"pip section should be '-e .[extras]', got {entry!r}"
    assert sorted(x.strip() for x in m.group(1).split(",")) == sorted(EXTRAS)


def test_environment_yml_lists_only_python_and_pip_for_conda():
    env = environment_yml()
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    names = sorted(re.split(r"[=<>! ]", d)[0] for d in conda)
    assert names == ["pip", "python"], "packages belong in pyproject.toml, not environment.yml"
    python = next(d for d in conda if d.startswith("python"))
    version = python.split("=")[-1]
    assert SpecifierSet(PYPROJECT["requires-python"]).contains(version + ".0"), "python in environment.yml must satisfy requires-python"


@pytest.mark.parametrize("req", ALL, ids=str)
def test_every_dependency_is_a_version_range(req):
    ops = {s.operator for s in req.specifier}
    assert ops & {">=", ">", "~=", "=="}, f"{req} needs a lower bound"
    assert ops & {"<", "<=", "~=", "=="}, f"{req} needs an upper bound"


def test_nothing_is_listed_twice():
    names = [canonicalize_name(r.name) for r in ALL]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_required_packages_are_declared():
    declared = {canonicalize_name(r.name) for r in ALL}
    assert sorted(set(map(canonicalize_name, REQUIRED)) - declared) == []


@pytest.mark.parametrize("req", ALL, ids=str)
def test_installed_versions_fit_the_ranges(req):
    """The ranges are ones that work here: what this environment has installed satisfies them."""
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{req.name} is not installed in this environment")
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is outside {req.specifier}"


def test_makefile_and_ci_use_the_same_extras_and_test_command():
    makefile = (REPO_ROOT / "Makefile").read_text()
    m = re.search(r"^EXTRAS := (.+)$", makefile, re.M)
    assert m and sorted(m.group(1).strip().split(",")) == sorted(EXTRAS)
    assert "pip install -e '.[$(EXTRAS)]'" in makefile
    assert "ipykernel install --sys-prefix --name dmutils" in makefile
    ci = REPO_ROOT / ".ci/run"
    assert ci.stat().st_mode & 0o111, ".ci/run must be executable"
    assert re.search(r"^make test\b", ci.read_text(), re.M), ".ci/run must call the README's test command"


def test_readme_starts_with_the_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```\w*\n(.*?)```", readme, re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == ["make report", "make test", "make lab"]
