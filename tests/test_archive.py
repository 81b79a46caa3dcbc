"""Published model folders: tag archives, git blob SHA-1 verification, the sha256 learnt at install."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from deepseg_imsct import archive, cache, checksums, download
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.registry import load_registry
from http_server import FlakyServer, send_bytes, status

TAG = "r20201215"
LOC = "findcord_tumor"


def blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def random_onnx(path: Path, channels: int, classes: int, seed: int = 0) -> bytes:
    """A small random-weight graph with the published models' signature: input 'input'
    [N, C, H, W, D] -> output 'output' [N, K, H, W, D] (sigmoid), spatial axes dynamic."""
    from onnx_models import pointwise_model

    rng = np.random.default_rng(seed)
    return pointwise_model(rng.normal(size=(classes, channels)), rng.normal(size=classes), None, path).read_bytes()


def tag_zip(name: str, files: dict[str, bytes]) -> bytes:
    """A zip laid out as a host's archive of a tag: every file under '<repo>-<tag>/'."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{name}-{TAG}/", b"")
        for file, data in files.items():
            zf.writestr(f"{name}-{TAG}/{file}", data)
    return buf.getvalue()


@pytest.fixture
def published(tmp_path):
    """The shipped registry's findcord_tumor entry, pointed at a random-weight file's blob."""
    onnx = random_onnx(tmp_path / "f.onnx", 1, 1)
    spec = replace(load_registry().model(LOC), blob_sha1=blob(onnx))
    return spec, onnx


def test_git_blob_sha1_is_what_git_names_the_file(tmp_path):
    (tmp_path / "hello").write_bytes(b"hello\n")
    assert checksums.git_blob_sha1(tmp_path / "hello") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    (tmp_path / "empty").write_bytes(b"")
    assert checksums.git_blob_sha1(tmp_path / "empty") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def test_the_shipped_entries_name_the_published_files_by_blob_and_tag():
    reg = load_registry()
    loc, seg = (reg.model(m) for m in reg.task("tumor_edema_cavity_t1_t2").models("sct"))
    assert (loc.blob_sha1, seg.blob_sha1) == ("21ef38438c313b725af62ad496a92fb63530f28f", "1ff5f46d57aacf916bea6c8d920e909b0c85bc83")
    assert loc.sources == ("https://github.com/ivadomed/findcord_tumor/archive/r20201215.zip",)
    assert seg.file == "model_seg_sctumor-edema-cavity_t2-t1_unet3d-multichannel.onnx" and not seg.sha256
    assert (loc.patch_size, seg.patch_size, seg.stride) == ((512, 256, 32), (128, 128, 32), (64, 64, 32))
    assert seg.contrasts == ("t2", "t1") and seg.postprocessing["edema"].min_voxels == 100


def test_the_member_is_found_in_the_top_folder_only():
    names = [f"{LOC}-{TAG}/", f"{LOC}-{TAG}/README.md", f"{LOC}-{TAG}/{LOC}.onnx", f"{LOC}-{TAG}/{LOC}.json"]
    assert archive.member_name(names, f"{LOC}.onnx") == f"{LOC}-{TAG}/{LOC}.onnx"
    assert archive.member_name([f"{LOC}.onnx"], f"{LOC}.onnx") == f"{LOC}.onnx"
    assert archive.member_name([f"a/b/{LOC}.onnx", f"../{LOC}.onnx", f"/{LOC}.onnx"], f"{LOC}.onnx") is None


def test_download_from_a_tag_archive_verifies_the_blob_and_records_sha256_and_size(published):
    spec, onnx = published
    payload = tag_zip(LOC, {f"{LOC}.onnx": onnx, f"{LOC}.json": b"{}", "README.md": b"# model"})
    with FlakyServer() as srv:
        spec = replace(spec, sources=(srv.route(f"/{TAG}.zip", send_bytes(payload, content_type="application/zip")),))
        path = download.ensure_model(spec, progress=False)
        assert path.read_bytes() == onnx and srv.hits[f"/{TAG}.zip"] == 1
        assert path.with_suffix(".json").read_bytes() == b"{}"  # the folder's config, kept beside the model
        record = json.loads(archive.record_path(path).read_text())
        assert record == {"blob_sha1": spec.blob_sha1, "sha256": hashlib.sha256(onnx).hexdigest(), "size": len(onnx),
                          "file": f"{LOC}.onnx"}
        learnt = download.verified_spec(spec)
        assert learnt.sha256 == record["sha256"] and learnt.size == len(onnx)
        assert download.ensure_model(spec, progress=False) == path and srv.hits[f"/{TAG}.zip"] == 1  # no second GET
        assert download.is_installed(spec)
        path.write_bytes(onnx[:-1] + b"\0")  # altered in place: fetched again
        assert download.ensure_model(spec, progress=False).read_bytes() == onnx and srv.hits[f"/{TAG}.zip"] == 2


def test_an_archive_with_another_file_is_refused_and_nothing_is_installed(published, tmp_path):
    spec, _ = published
    other = random_onnx(tmp_path / "o.onnx", 1, 1, seed=1)
    with FlakyServer() as srv:
        spec = replace(spec, sources=(srv.route("/bad.zip", send_bytes(tag_zip(LOC, {f"{LOC}.onnx": other}))),
                                      srv.route("/gone.zip", status(404))))
        with pytest.raises(DeepsegError, match=rf"cannot get model {LOC}-{TAG} .*/bad.zip: git blob SHA-1 {blob(other)}, "
                                               rf"expected {spec.blob_sha1}.*/gone.zip: HTTP 404"):
            download.ensure_model(spec, progress=False)
    folder = cache.cache_dir() / "models" / LOC / TAG
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".flock")) == []


def test_a_zip_without_the_model_says_what_it_holds(published):
    spec, _ = published
    with FlakyServer() as srv:
        spec = replace(spec, sources=(srv.route("/x.zip", send_bytes(tag_zip("other", {"other.onnx": b"x"}))),))
        with pytest.raises(DeepsegError, match=rf"holds no {LOC}.onnx in its top folder \(it holds other-{TAG}\)"):
            download.ensure_model(spec, progress=False)


@pytest.mark.parametrize("layout", ["zip", "toolbox", "file"])
def test_offline_import_from_a_zip_a_toolbox_folder_or_the_file(published, tmp_path, layout):
    spec, onnx = published
    if layout == "zip":
        source = tmp_path / f"{TAG}.zip"
        source.write_bytes(tag_zip(LOC, {f"{LOC}.onnx": onnx}))
    else:  # $SCT_DIR/data/deepseg_models/<model>/<model>.onnx
        (tmp_path / "deepseg_models" / LOC).mkdir(parents=True)
        (tmp_path / "deepseg_models" / LOC / f"{LOC}.onnx").write_bytes(onnx)
        source = tmp_path / "deepseg_models" if layout == "toolbox" else tmp_path / "deepseg_models" / LOC / f"{LOC}.onnx"
    path = download.import_model(spec, source)
    assert path.read_bytes() == onnx and download.verified_spec(spec).sha256 == hashlib.sha256(onnx).hexdigest()
    assert download.ensure_model(spec, offline=True) == path


def test_offline_import_of_a_wrong_file_names_both_hashes(published, tmp_path):
    spec, _ = published
    wrong = tmp_path / f"{LOC}.onnx"
    wrong.write_bytes(b"not the model")
    with pytest.raises(DeepsegError, match=rf"is not {LOC}-{TAG}: git blob SHA-1 {blob(b'not the model')}, expected {spec.blob_sha1}"):
        download.import_model(spec, wrong)
    assert not download.is_installed(spec)


def test_a_transient_failure_of_the_archive_is_retried(published, monkeypatch):
    from deepseg_imsct import fetch

    monkeypatch.setattr(fetch, "BACKOFF_S", 0.01)
    spec, onnx = published
    with FlakyServer() as srv:
        url = srv.route("/r.zip", status(503), send_bytes(tag_zip(LOC, {f"{LOC}.onnx": onnx})))
        assert download.ensure_model(replace(spec, sources=(url,)), progress=False).read_bytes() == onnx
        assert srv.hits["/r.zip"] == 2
