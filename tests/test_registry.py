"""The model spec: schema check, typed entries, model facts embedded in ONNX files and checked at load."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.registry import FACTS, METADATA_KEY, SCHEMA, load_registry, parse_entry


def _registry(tmp_path: Path, **changes) -> Path:
    shipped = load_registry()
    data = json.loads(Path(shipped.path).read_text(encoding="utf-8"))
    data.update(changes)
    path = tmp_path / "model_registry.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("schema, fix", [(None, "reinstall"), (0, "reinstall"), (SCHEMA + 1, "upgrade deepseg-imsct")])
def test_a_registry_of_another_schema_is_refused(tmp_path, schema, fix):
    with pytest.raises(DeepsegError, match=f"schema {schema!r}, this deepseg-imsct reads schema {SCHEMA}: {fix}"):
        load_registry(_registry(tmp_path, schema=schema))


def test_every_shipped_model_file_carries_the_facts_of_its_entry():
    """Every model file shipped with the package (the published ones are downloaded, see test_archive)."""
    import onnx

    reg = load_registry()
    for name, entry in reg.models.items():
        for version in entry["versions"]:
            spec = reg.model(name, version)
            if not spec.local_sources():
                assert spec.blob_sha1 and spec.model_set == "sct", spec.key
                continue
            meta = {p.key: p.value for p in onnx.load(str(spec.local_sources()[0]), load_external_data=False).metadata_props}
            assert json.loads(meta[METADATA_KEY]) == spec.facts(), spec.key
            assert set(spec.facts()) == set(FACTS)


def test_exclusive_entries_must_end_with_the_union(tmp_path):
    reg = load_registry()
    entry = dict(reg.models["imsct_segmenter"]["versions"][reg.default_version("imsct_segmenter")])
    assert parse_entry("s", "1", entry | {"output": "exclusive"}, tmp_path / "r.json").output == "exclusive"
    with pytest.raises(DeepsegError, match="last class must be the union 'whole-tumor'"):
        parse_entry("s", "1", entry | {"output": "exclusive", "classes": ["whole-tumor", "tumor", "edema", "cavity"]}, tmp_path / "r.json")
    with pytest.raises(DeepsegError, match="output 'softmax', which this version cannot read: upgrade"):
        parse_entry("s", "1", entry | {"output": "softmax"}, tmp_path / "r.json")


def test_a_model_file_made_for_other_settings_is_refused(tmp_path):
    reg = load_registry()
    spec = reg.model("imsct_segmenter", "1.1.1")  # a sigmoid model: "exclusive" differs
    facts = spec.facts()
    spec.check_facts({}, "m.onnx")  # a graph without facts (older exports) passes
    spec.check_facts({METADATA_KEY: json.dumps(facts)}, "m.onnx")
    other = facts | {"stride": [32, 32, 32], "output": "exclusive"}
    with pytest.raises(DeepsegError, match=r"model file m.onnx was made for other settings than its registry entry "
                                           r"imsct_segmenter-[\d.]+ \(output, stride differ\): reinstall with -install"):
        spec.check_facts({METADATA_KEY: json.dumps(other)}, "m.onnx")
    with pytest.raises(DeepsegError, match=r"\(metadata differ\)"):
        spec.check_facts({METADATA_KEY: "not json"}, "m.onnx")


def test_loading_a_graph_whose_facts_disagree_with_its_entry_fails_with_the_fix(tmp_path):
    import hashlib

    import onnx
    from onnx_models import write_registry

    from deepseg_imsct.pipeline import Predictor

    path = write_registry(tmp_path)
    reg = load_registry(path)
    graph = tmp_path / "seg.onnx"
    model = onnx.load(str(graph))
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(reg.model("seg").facts() | {"spacing_mm": [2.0, 2.0, 2.0]}))
    onnx.save(model, str(graph))
    data = json.loads(path.read_text())
    entry = data["models"]["seg"]["versions"]["1.0"]
    entry["sha256"], entry["size"] = hashlib.sha256(graph.read_bytes()).hexdigest(), graph.stat().st_size
    path.write_text(json.dumps(data))
    with pytest.raises(DeepsegError, match=r"seg.onnx was made for other settings than its registry entry seg-1.0 \(spacing_mm differ\)"):
        Predictor(registry=load_registry(path))
