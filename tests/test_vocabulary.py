"""The user's vocabulary: the file format and its errors, merged and vocabulary-only candidates,
synonyms as one class, and labels equal between the reference pipeline and the Triton path (real
embedded tritonserver, tiny profile) in both modes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssa.errors import InputError
from ssa.vocabulary import MAX_NAMES, Vocabulary, class_embeddings, mask_candidates

TEXT = """# classes of a street survey
person: man, woman, child
sky
tree: trees, forest
building
road
car: automobile
water: sea, lake
"""


@pytest.fixture
def vocabulary_file(tmp_path):
    path = tmp_path / "vocabulary.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_file_is_read_with_synonyms_and_comments(vocabulary_file):
    v = Vocabulary.read(vocabulary_file)
    assert v.classes == ("person", "sky", "tree", "building", "road", "car", "water")
    assert v.synonyms["person"] == ("man", "woman", "child") and "sky" not in v.synonyms
    assert v.texts("car") == ("car", "automobile") and v.canonical("forest") == "tree" and v.canonical("dog") == "dog"
    p = v.provenance()
    assert p == {"sha256": v.sha256, "size": 7, "synonyms": 8, "mode": "merged"}
    assert Vocabulary.read(vocabulary_file, only=True).provenance()["mode"] == "only"
    assert Vocabulary.from_json(json.loads(json.dumps(v.to_json()))) == v


@pytest.mark.parametrize("content, message", [
    (b"", "no class names"),
    (b"# only a comment\n\n   \n", "no class names"),
    (b"caf\xe9\nsky\n", "not UTF-8"),
    ("\n".join(f"class {i}" for i in range(MAX_NAMES + 1)).encode(), f"more than {MAX_NAMES} class names"),
    (b"sky\ncar\nsky\n", "'sky' is listed twice"),
    (b"car: sky\nsky\n", "'sky' is listed twice"),
    (b": orphan synonym\n", "line 1: no class name"),
])
def test_bad_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        Vocabulary.read(path)
    assert error.value.source == str(path)


def test_largest_allowed_vocabulary_is_read(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("\n".join(f"class {i}" for i in range(MAX_NAMES)))
    assert len(Vocabulary.read(path).classes) == MAX_NAMES


def test_candidates_merged_and_only(vocabulary_file):
    merged, only = Vocabulary.read(vocabulary_file), Vocabulary.read(vocabulary_file, only=True)
    close_set, phrases = ["person", "wall"], ["a man", "automobile", "forest"]
    assert mask_candidates(close_set, phrases, None) == ["person", "wall", "a man", "automobile", "forest"]
    assert mask_candidates(close_set, phrases, merged) == [
        "person", "wall", "a man", "car", "tree", "sky", "building", "road", "water"]
    assert mask_candidates(close_set, phrases, only) == list(only.classes)


def test_class_with_synonyms_is_scored_with_their_mean():
    v = Vocabulary(("car", "sky"), {"car": ("automobile",)})
    table = {"car": np.array([1.0, 0.0]), "automobile": np.array([0.0, 1.0]), "sky": np.array([0.6, 0.8])}
    calls = []

    def embed(names):
        calls.append(list(names))
        return np.stack([table[n] for n in names])

    out = class_embeddings(["car", "sky"], embed, v)
    assert calls == [["car", "automobile", "sky"]]  # every distinct text in one encoder call
    assert np.allclose(out[0], np.array([1.0, 1.0]) / np.sqrt(2)) and np.array_equal(out[1], table["sky"])


def test_bad_vocabulary_stops_the_command_before_any_work(vocabulary_file, example_dir, tmp_path, capsys):
    from ssa.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    code = main(["annotate", "--data", str(example_dir), "--out_dir", str(tmp_path / "out"),
                 "--url", "127.0.0.1:1", "--vocabulary", str(empty)])
    assert code == 2 and f"{empty}: vocabulary file has no class names" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code = main(["reference", "--data_dir", str(example_dir), "--out_dir", str(tmp_path / "out"),
                 "--models_dir", str(tmp_path / "none"), "--vocabulary_only"])
    assert code == 2 and "--vocabulary_only needs --vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # no profile was built


# ---------------------------------------------------------------- reference == Triton, both modes
@pytest.fixture(scope="module")
def torch_models(tiny_profile):
    from ssa.reference import TorchModels

    return TorchModels.load(tiny_profile)


@pytest.mark.parametrize("only", [False, True], ids=["merged", "only"])
def test_reference_and_triton_agree(only, server, torch_models, example_dir, nlp, tmp_path):
    import tritonclient.grpc as grpcclient

    from client.engine_client import annotate
    from ssa.dataset import folder_items
    from ssa.reference import annotate_image
    from ssa.runner import load_item

    path = tmp_path / "v.txt"
    path.write_text(TEXT)
    vocabulary = Vocabulary.read(path, only=only)
    client = grpcclient.InferenceServerClient(server.url)
    compared = from_list = 0
    for item in folder_items(example_dir):
        image, _, masks = load_item(item)
        expected = annotate_image(image, masks, torch_models, nlp=nlp, vocabulary=vocabulary)
        got = annotate(client, item.image.read_bytes(), item.annotations.read_bytes(), vocabulary=vocabulary)
        assert len(got) == len(expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert (g.class_name, g.class_proposals, g.caption) == (e.class_name, e.class_proposals, e.caption), \
                (item.stem, i)
            assert g.proposal_scores == pytest.approx(e.proposal_scores, abs=1e-4)
            if only:
                assert g.class_name in vocabulary.classes and set(g.class_proposals) <= set(vocabulary.classes)
            from_list += sum(p in vocabulary.classes for p in g.class_proposals)
        compared += len(got)
    assert compared == 60
    assert from_list > 0  # merged: the list's names compete with the engine's own, and some win


def test_runner_records_the_vocabulary_and_server_refuses_a_bad_one(server, example_dir, vocabulary_file, tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from client.engine_client import build_inputs
    from client.runner import RunnerConfig, annotate_dataset
    from ssa.dataset import listings

    vocabulary = Vocabulary.read(vocabulary_file, only=True)
    cfg = RunnerConfig(urls=[server.url], out_dir=tmp_path / "out", vocabulary=vocabulary, progress=False)
    summary, stop = annotate_dataset(cfg, listings([example_dir]))
    assert stop is None and summary.done == 6 and not summary.failures
    written = sorted((tmp_path / "out" / example_dir.name).glob("*_semantic.json"))
    assert len(written) == 6
    for out in written:
        doc = json.loads(out.read_text())
        assert doc["ssa"]["vocabulary"] == {"sha256": vocabulary.sha256, "size": 7, "synonyms": 8, "mode": "only"}
        assert all(a["class_name"] in vocabulary.classes for a in doc["annotations"])
    client = grpcclient.InferenceServerClient(server.url)
    image, document = (example_dir / "sa_1.jpg").read_bytes(), (example_dir / "sa_1.json").read_bytes()
    for bad, message in (({"classes": []}, "vocabulary is empty"),
                         ({"classes": [f"c{i}" for i in range(MAX_NAMES + 1)]}, "at most 10000"),
                         ({"classes": ["sky", "sky"]}, "listed twice"),
                         ("sky", "vocabulary must be an object")):
        params = json.dumps({"vocabulary": bad}).encode()
        with pytest.raises(InferenceServerException) as error:
            client.infer("ssa_engine", build_inputs(image, document, encoded_params=params))
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT" and message in error.value.message(), bad


@pytest.mark.parametrize("only", [False, True], ids=["merged", "only"])
def test_in_process_engine_agrees_with_the_reference(only, tiny_profile, tiny_export, torch_models, example_dir, nlp,
                                                     vocabulary_file):
    from ssa.dataset import folder_items
    from ssa.engine import annotate_image as engine_annotate
    from ssa.onnx_models import onnx_models
    from ssa.preprocess import Processors
    from ssa.reference import annotate_image
    from ssa.runner import load_item

    vocabulary = Vocabulary.read(vocabulary_file, only=only)
    processors = Processors.load(tiny_profile)
    models = onnx_models(tiny_export, processors)
    for item in folder_items(example_dir)[:3]:
        image, _, masks = load_item(item)
        got = engine_annotate(image, masks, models, processors, nlp=nlp, vocabulary=vocabulary)
        expected = annotate_image(image, masks, torch_models, nlp=nlp, vocabulary=vocabulary)
        assert [(g.class_name, g.class_proposals) for g in got] == [(e.class_name, e.class_proposals) for e in expected]
