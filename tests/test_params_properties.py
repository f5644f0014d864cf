"""Property tests (Hypothesis) over the params schema and ``--set`` overrides: whatever a user types, the answer
is a valid Params or the one-line error (exit 2), never another exception or a traceback, and nothing is written.

Seeded (``derandomize``) and bounded, so every run tries the same examples in a few seconds."""
import os
import typing

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dmutils.commands import main
from dmutils.config import Params, load_params
from dmutils.errors import UserError
from dmutils.paths import REPO_ROOT

SETTINGS = settings(derandomize=True, max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections included ('masks', 'masks.crf', 'masks.crf.enabled', ...)."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        out.append(key)
        sub = [a for a in (field.annotation, *typing.get_args(field.annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if sub:
            out += _keys(sub[0], key + ".")
    return out


KEYS = _keys(Params)
ODD = "abc_.:-=[]{},#&*!|>'\"%@` \t\n\\~01é"
real_keys = st.sampled_from(KEYS)
keys = st.one_of(real_keys, real_keys, real_keys,  # mostly real keys, so that values reach the schema's checks
                 real_keys.map(lambda k: k + ".x"),  # nested one level too deep
                 real_keys.map(lambda k: k.rsplit(".", 1)[-1]),  # a leaf without its section
                 st.sampled_from(["", " ", "a\nb", "masks.x\ny", "masks..tau", "masks.tau ", "MASKS.TAU", "é"]),
                 st.text(ODD, max_size=12))  # unknown, empty parts, odd characters
plausible = st.one_of(st.integers(-3, 300).map(str), st.floats(-1, 2, allow_nan=False).map(lambda x: f"{x:.3g}"),
                      st.sampled_from(["true", "false", "null", "[]", "[16, 8]", "[[1, 2], [2, 2]]", "[0.1, 0.9]", "cpu",
                                       "self_attention", "none", "global", "sd", "toy", "{}", "{name: cat}",
                                       "[{name: cat, synonyms: [kitten]}]", "models/toy-sd"]))
odd = st.one_of(st.text(ODD, max_size=20), st.integers(-10**12, 10**12).map(str), st.sampled_from(["nan", ".inf", "-.inf", "1e400"]),
                st.lists(st.integers(-5, 5) | st.text("ab", max_size=2), max_size=3).map(str))
values = st.one_of(plausible, plausible, odd)
overrides = st.lists(st.one_of(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"),
                               st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"),
                               st.text(ODD, max_size=10)), max_size=3)


@SETTINGS
@given(overrides)
@example(["a\nb=1"])  # a newline in a key must not break the one line
@example(["masks.x\ny=1"])
@example(["classes=[]", "dataset.num_samples=0", "masks=3", "masks.tau.x=1", "capture.cross_resolutions=[]"])
def test_overrides_validate_or_raise_the_one_line_error(sets):
    try:
        params = load_params(None, sets)
    except UserError as e:
        assert str(e) and "\n" not in str(e), str(e)
        return
    assert isinstance(params, Params)


def _tree() -> dict[str, float]:
    """Files of the repository (sizes and times), what a check must not touch; .git and the caches aside."""
    out = {}
    for d, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [x for x in dirs if x not in (".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis")]
        for f in files:
            p = os.path.join(d, f)
            st_ = os.lstat(p)
            out[p] = (st_.st_size, st_.st_mtime_ns)
    return out


@pytest.fixture
def stub_generate(monkeypatch):
    """``dmutils generate``'s own checks (params, --out, --shard, the preflight) run; its computing does not."""
    from dmutils.commands import generate

    calls = []
    monkeypatch.setattr(generate, "generate_dataset", lambda *a, **k: calls.append(a) or {})
    monkeypatch.setattr(generate, "format_summary", lambda summary: "stubbed")
    return calls


@SETTINGS
@example(sets=["masks.tau=2"], command="generate", shard="1/2")  # valid: the checks pass and generate is reached
@example(sets=["masks.tau=2"], command="check", shard=None)
@given(sets=overrides, command=st.sampled_from(["check", "generate"]), shard=st.sampled_from([None, "0/2", "2/2", "x"]))
def test_commands_answer_bad_params_with_exit_2_and_write_nothing(capsys, stub_generate, sets, command, shard):
    before = _tree()
    argv = [command, *[a for s in sets for a in ("--set", s)]]
    if command == "generate" and shard:
        argv += ["--shard", shard]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors (a value that starts with '-')
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    assert code == 0 or err.strip(), "an exit 2 says why"
    if command == "generate":
        assert (code == 0) == (len(stub_generate) == 1), err  # generate is reached exactly when every check passed
    stub_generate.clear()
    assert _tree() == before, "a check wrote into the repository"
