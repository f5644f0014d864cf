"""results/ledger.yaml: every figure a text file quotes matches its committed JSON, and every result JSON says where it
comes from (a ``provenance`` block). The format is documented at the top of results/ledger.yaml."""
from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import yaml

from dmutils.paths import REPO_ROOT

RESULTS = REPO_ROOT / "results"
LEDGER = RESULTS / "ledger.yaml"
NEAR_CHARS = 100  # `near` must be within this many characters of the quote (whitespace runs counted as one space)
FIELDS = {"file", "quote", "json", "key", "round"}


def _entries() -> list[dict]:
    entries = yaml.safe_load(LEDGER.read_text())
    assert isinstance(entries, list) and entries, f"{LEDGER} must be a non-empty list of entries"
    return entries


def _result_files() -> list[Path]:
    return sorted([*RESULTS.glob("*.json"), *RESULTS.glob("*/*.json")])


def lookup(data: dict, key: str):
    """``data[a][b][c]`` for the dotted key ``a.b.c`` (a number indexes a list: ``ratio_toy_range.0``); KeyError naming
    the missing part."""
    value = data
    for i, part in enumerate(key.split(".")):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(f"{'.'.join(key.split('.')[:i + 1])} not found")
    return value


def rounded(value, digits: int) -> str:
    """The JSON value as written (its shortest repr), rounded half up to ``digits`` decimals: 0.2975 -> '0.298'."""
    return str(Decimal(repr(value)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def quoted(text: str, quote: str, near: str | None) -> bool:
    """Whether ``text`` has ``quote`` as a number of its own, with ``near`` within NEAR_CHARS characters when given."""
    flat = " ".join(text.split())
    for m in re.finditer(rf"(?<![\d.]){re.escape(quote)}(?![\d])(?!\.\d)", flat):
        if near is None or near in flat[max(0, m.start() - NEAR_CHARS):m.end() + NEAR_CHARS]:
            return True
    return False


def _ids(entries):
    return [f"{e.get('file')}:{e.get('quote')}:{e.get('key')}" for e in entries]


def test_every_result_json_has_a_provenance_block():
    files = _result_files()
    assert files, "results/ holds no JSON"
    missing = [str(f.relative_to(REPO_ROOT)) for f in files if not isinstance(json.loads(f.read_text()).get("provenance"), dict)]
    assert not missing, f"result JSONs without a provenance block (dmutils bench NAME --json --out FILE writes one): {missing}"
    for f in files:
        prov = json.loads(f.read_text())["provenance"]
        assert prov.get("commit") and prov.get("command", "").startswith("dmutils "), f"{f}: provenance without commit or command"


@pytest.mark.parametrize("entry", _entries(), ids=_ids(_entries()))
def test_ledger_entry_matches_its_json_and_its_text(entry):
    assert FIELDS <= set(entry) and set(entry) <= FIELDS | {"near"}, f"entry fields are {sorted(FIELDS)} and optional near: {entry}"
    text_file, json_file = REPO_ROOT / entry["file"], REPO_ROOT / entry["json"]
    assert text_file.is_file(), f"{entry['file']} does not exist"
    assert json_file.is_file(), f"{entry['json']} does not exist"
    data = json.loads(json_file.read_text())
    assert isinstance(data.get("provenance"), dict), f"{entry['json']} has no provenance block"
    try:
        value = lookup(data, entry["key"])
    except KeyError as e:
        pytest.fail(f"{entry['json']}: {e.args[0]}")
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{entry['json']}:{entry['key']} is {value!r}, not a number"
    quote = str(entry["quote"])
    assert rounded(value, int(entry["round"])) == quote, \
        f"{entry['json']}:{entry['key']} = {value} rounds to {rounded(value, int(entry['round']))}, {entry['file']} quotes {quote}"
    assert quoted(text_file.read_text(), quote, entry.get("near")), \
        f"{entry['file']} does not quote {quote}" + (f" within {NEAR_CHARS} characters of {entry['near']!r}" if entry.get("near") else "")


def test_the_checks_themselves():
    assert rounded(0.2975, 3) == "0.298" and rounded(0.6915, 3) == "0.692" and rounded(0.3, 3) == "0.300" and rounded(358, 0) == "358"
    text = "presence 0.958, by route:\n   pooled_only 0.300; ratio 10.918 and 0.9181"
    assert quoted(text, "0.958", "presence") and quoted(text, "0.300", "route:")  # across a line break
    assert not quoted(text, "0.95", None)  # not inside 0.958
    assert not quoted(text, "0.918", None)  # not inside 10.918 nor 0.9181
    assert not quoted(text, "0.958", "ratio x")
    assert lookup({"a": {"b": {"0": 1}}}, "a.b.0") == 1 and lookup({"r": [0.9, 1.1]}, "r.1") == 1.1
    with pytest.raises(KeyError, match="r.2 not found"):
        lookup({"r": [0.9, 1.1]}, "r.2")
    with pytest.raises(KeyError, match="a.c not found"):
        lookup({"a": {"b": 1}}, "a.c")
