"""Prompt sources: templates, Dataset Diffusion caption files, retrieval from a caption corpus."""
import json
import re

import pytest

from dmutils.config import ClassSpec, load_params
from dmutils.dataset.prompts import PromptPlan, parse_class_prompt, sample_seed
from dmutils.errors import ParamsError
from dmutils.paths import REPO_ROOT

VOC_LIKE = [{"name": "person", "synonyms": ["man", "woman"]}, {"name": "horse"},
            {"name": "tv monitor", "synonyms": ["television"]}, {"name": "dining table", "synonyms": ["table"]}]


def _plan(**over):
    return PromptPlan(load_params(overrides=over))


def _caption_words(specs) -> set[str]:
    """The words of the prompts before the appended class prompt."""
    return {w for s in specs for w in re.findall(r"\w+", s.prompt.split("; ")[0])}


def test_templates_same_params_same_samples_in_any_order():
    a = _plan(run={"seed": 3})
    b = _plan(run={"seed": 3})
    forward = [a(i) for i in range(40)]
    backward = [b(i) for i in reversed(range(40))][::-1]
    assert forward == backward
    assert len({s.seed for s in forward}) == 40
    assert [s.seed for s in forward] != [s.seed for s in _plan(run={"seed": 4}).specs(range(40))]
    assert forward[7].seed == sample_seed(3, 7)


def test_templates_use_counts_synonyms_and_append_class_names():
    plan = _plan(prompts={"classes_per_image": [2], "class_prompt": "append"})
    params = load_params()
    vocab = {c.name: {c.name, *c.synonyms, *c.subclasses} for c in params.classes}
    used_other_word = False
    for s in plan.specs(range(30)):
        assert len(s.classes) == 2 and len(set(s.classes)) == 2
        text, appended = s.prompt.split("; ")
        assert appended == " ".join(s.classes) and s.words == {c: c for c in s.classes}
        words = set(re.findall(r"\w+", text))
        assert all(words & vocab[c] for c in s.classes)
        used_other_word |= not all(c in words for c in s.classes)
    assert used_other_word, "synonyms/sub-classes are on by default and must show up"


def test_subclass_words_only_when_asked_for_and_the_toy_default_leaves_them_out():
    params = load_params()
    subclass_words = {w for c in params.classes for w in c.subclasses}
    synonym_words = {w for c in params.classes for w in c.synonyms}

    def words_used(plan):
        return _caption_words(plan.specs(range(60)))

    assert words_used(_plan()) & subclass_words, "sub-class words are on in the schema"
    without = words_used(_plan(prompts={"use_subclasses": False}))
    assert not without & subclass_words and without & synonym_words
    toy = load_params(REPO_ROOT / "params" / "toy.yaml")
    assert not words_used(PromptPlan(toy)) & subclass_words
    assert load_params(REPO_ROOT / "params" / "voc_sd15.yaml").prompts.use_subclasses


def test_study02_prompts_follow_use_subclasses():
    from dmutils.studies.thresholds import study_specs

    params = load_params(overrides={"prompts": {"use_subclasses": False}, "study": {"threshold_images_per_class": 12}})
    subclass_words = {w for c in params.classes for w in c.subclasses}
    used = _caption_words(study_specs(params))
    assert not used & subclass_words and used & {w for c in params.classes for w in c.synonyms}


def test_template_without_enough_slots_is_refused():
    with pytest.raises(ParamsError, match="no template has 3 class slots"):
        _plan(prompts={"classes_per_image": [3]})


def _captions(tmp_path, rows):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(rows))
    return str(path)


def test_caption_file_in_dataset_diffusion_format(tmp_path):
    rows = [{"filename": "0.jpg", "caption": "a man riding a horse; person horse", "class_prompt": "person horse"},
            {"filename": "1.jpg", "caption": "a television on a table", "class_prompt": "tv monitor dining table"}]
    params = {"classes": VOC_LIKE, "prompts": {"source": "captions", "caption_file": _captions(tmp_path, rows)}}
    a0, a1, a2 = _plan(**params).specs(range(3))
    assert a0.prompt == "a man riding a horse; person horse"  # the suffix is not appended twice
    assert a0.classes == ("person", "horse") and a0.source == "0.jpg"
    assert a1.prompt == "a television on a table; tv monitor dining table" and a1.classes == ("tv monitor", "dining table")
    assert a2.prompt == a0.prompt and a2.seed != a0.seed  # the file cycles, with new seeds
    n0 = _plan(**{**params, "prompts": {**params["prompts"], "class_prompt": "none"}})(0)
    assert n0.prompt == "a man riding a horse" and n0.words == {"person": "man", "horse": "horse"}
    x1 = _plan(**{**params, "prompts": {**params["prompts"], "class_prompt": "cross_attention"}})(1)
    assert x1.prompt == "a television on a table" and x1.class_prompt == "tv monitor dining table"


def test_unknown_class_word_in_caption_file_names_it_and_the_classes(tmp_path):
    rows = [{"filename": "0.jpg", "caption": "a cat", "class_prompt": "person cat"}]
    with pytest.raises(ParamsError, match=r"'cat' is not a class.*person, horse, tv monitor, dining table"):
        _plan(classes=VOC_LIKE, prompts={"source": "captions", "caption_file": _captions(tmp_path, rows)})
    with pytest.raises(ParamsError, match="lacks"):
        _plan(classes=VOC_LIKE, prompts={"source": "captions", "caption_file": _captions(tmp_path, [{"caption": "x"}])})
    with pytest.raises(ParamsError, match="caption_file is not set"):
        _plan(prompts={"source": "captions"})


def test_parse_class_prompt_prefers_longest_phrase():
    classes = [ClassSpec(**c) for c in VOC_LIKE]
    assert parse_class_prompt("person person tv monitor table", classes) == ["person", "tv monitor", "dining table"]


def test_retrieval_keeps_captions_that_mention_a_class(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a man and his horse\nthe sky at night\n# comment\na woman at the table\nhorses in a field\n")
    plan = _plan(classes=VOC_LIKE, prompts={"source": "retrieval", "corpus_file": str(corpus), "class_prompt": "none"})
    got = [(s.prompt, s.classes, s.words) for s in plan.specs(range(3))]
    assert got == [("a man and his horse", ("person", "horse"), {"person": "man", "horse": "horse"}),
                   ("a woman at the table", ("person", "dining table"), {"person": "woman", "dining table": "table"}),
                   ("horses in a field", ("horse",), {"horse": "horses"})]
    corpus.write_text("the sky at night\n")
    with pytest.raises(ParamsError, match="no caption mentions"):
        _plan(classes=VOC_LIKE, prompts={"source": "retrieval", "corpus_file": str(corpus)})


def test_shipped_toy_corpus_feeds_every_toy_class():
    plan = _plan(prompts={"source": "retrieval", "corpus_file": "params/corpora/toy_captions.txt", "classes_per_image": [1, 2, 3]})
    specs = plan.specs(range(200))
    assert (REPO_ROOT / "params/corpora/toy_captions.txt").is_file()
    assert {c for s in specs for c in s.classes} == set(load_params().class_names)
    assert all("background" not in s.prompt.split(";")[0] or s.classes for s in specs)
