"""Tests of the model cache (deepseg_imsct.download) and the network half (deepseg_imsct.fetch).

Real files, a real misbehaving HTTP server on 127.0.0.1 (tests/http_server.py) and real processes
for the lock. Limits are made tiny so that the tests stay short, but no test asserts a duration:
the machine may be busy.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from http_server import FlakyServer, free_port, html_page, redirect, send_bytes, stall, status, trickle
from unprivileged import as_nobody, can_drop_privileges, shared_folder

from deepseg_imsct import cache, checksums, cli, download, fetch
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.registry import ModelSpec

PAYLOAD = b"\x08\x07\x12\x04onnx" + os.urandom(300_000)
READ_TIMEOUT_S = 0.4
TUNABLES = {fetch: ("CONNECT_TIMEOUT_S", "READ_TIMEOUT_S", "BACKOFF_S", "RATE_WINDOW_S", "WATCH_POLL_S"),
            cache: ("LOCK_POLL_S", "LOCK_WAIT_S")}


def make_spec(payload: bytes = PAYLOAD, sources: tuple[str, ...] = (), registry_dir: Path | None = None,
              name: str = "m", version: str = "1.0") -> ModelSpec:
    return ModelSpec(
        name=name, version=version, file="model.onnx", sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload), sources=tuple(sources), contrasts=("t2",), spacing_mm=(1.0, 1.0, 2.0),
        patch_size=(8, 8, 8), stride=(8, 8, 8), classes=("tumor",), normalization="zscore", postprocessing={},
        registry_dir=registry_dir or Path("/nonexistent-registry"),
    )


def _tune() -> None:
    """Short timings for tests (also called in spawned children)."""
    fetch.CONNECT_TIMEOUT_S = 5.0
    fetch.READ_TIMEOUT_S = READ_TIMEOUT_S
    fetch.BACKOFF_S = 0.01
    fetch.WATCH_POLL_S = 0.02
    cache.LOCK_POLL_S = 0.02
    cache.LOCK_WAIT_S = 60.0


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPSEG_IMSCT_HOME", str(cache))
    monkeypatch.delenv(fetch.ENV_DEADLINE, raising=False)
    monkeypatch.delenv(fetch.ENV_MIN_RATE, raising=False)
    for module, names in TUNABLES.items():
        for name in names:
            monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    _tune()
    return cache


@pytest.fixture
def server():
    with FlakyServer(lifetime_s=120) as srv:
        yield srv


def cached(spec: ModelSpec, home: Path) -> Path:
    return home / "models" / spec.name / spec.version / spec.file


def leftovers(folder: Path) -> list[str]:
    """Files in a cache folder other than lock files (no bad model, no temp file may remain)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".flock", ".lock")))


def age_file(path: Path, seconds: float = 3600) -> None:
    old = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(old, old))


def tamper_in_place(path: Path) -> None:
    """Change two bytes of ``path`` keeping its size, inode and timestamps."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        fh.write(b"\xff\xfe")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ----------------------------------------------------------------------------- download paths


def test_download_then_cache_hit_without_request(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/m.onnx", send_bytes(PAYLOAD)),))
    path = download.ensure_model(spec, progress=False)
    assert path == cached(spec, home)
    assert path.read_bytes() == PAYLOAD
    assert download.ensure_model(spec, progress=True) == path
    assert server.hits["/m.onnx"] == 1
    assert leftovers(path.parent) == ["model.onnx"]


def test_cached_model_is_verified_by_content(server: FlakyServer, home: Path) -> None:
    """Altered in place with size, inode and mtime restored: found by its sha256, then fetched again."""
    spec = make_spec(sources=(server.route("/m.onnx", send_bytes(PAYLOAD)),))
    path = download.ensure_model(spec, progress=False)
    age_file(path)  # as on a later day
    tamper_in_place(path)
    assert not download.is_installed(spec)
    with pytest.raises(DeepsegError, match=rf"{path}: sha256 [0-9a-f]{{64}}, expected {spec.sha256}"):
        download.ensure_model(spec, offline=True)
    assert download.ensure_model(spec, progress=False) == path
    assert path.read_bytes() == PAYLOAD and server.hits["/m.onnx"] == 2
    assert leftovers(path.parent) == ["model.onnx"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_file_is_fetched_again(server: FlakyServer, home: Path, damage: str) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    path = download.ensure_model(spec, progress=False)
    data = path.read_bytes()
    path.write_bytes(data[:100] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits["/a"] == 2


def test_404_then_next_mirror(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", status(404)), server.route("/b", send_bytes(PAYLOAD))))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits == {"/a": 1, "/b": 1}  # a 404 is not retried


def test_mirrors_are_tried_in_order_and_stop_at_the_first_good_one(server: FlakyServer, home: Path) -> None:
    other = PAYLOAD[::-1]
    urls = (server.route("/wrong", send_bytes(other)), server.route("/html", html_page()),
            server.route("/good", send_bytes(PAYLOAD)), server.route("/unused", send_bytes(PAYLOAD)))
    order: list[str] = []
    real = fetch._Transfer.__call__

    def spy(self, url, output_file, pooch_):
        order.append(url)
        return real(self, url, output_file, pooch_)

    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(fetch._Transfer, "__call__", spy)
        assert download.ensure_model(make_spec(sources=urls), progress=False).read_bytes() == PAYLOAD
    assert order == list(urls[:3])
    assert server.hits == {"/wrong": 1, "/html": 1, "/good": 1}


def test_500_then_success_retries(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", status(500), status(503), send_bytes(PAYLOAD)),))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits["/a"] == 3


def test_persistent_5xx_gives_up_after_attempts(server: FlakyServer, home: Path) -> None:
    url = server.route("/a", status(503))
    with pytest.raises(DeepsegError, match="HTTP 503") as err:
        download.ensure_model(make_spec(sources=(url,)), progress=False)
    assert url in str(err.value) and "imsct_deepseg -install" in str(err.value)
    assert server.hits["/a"] == fetch.ATTEMPTS


@pytest.mark.parametrize("action, reason", [
    (send_bytes(PAYLOAD, cut=len(PAYLOAD) // 2), "truncated|Connection broken"),
    (send_bytes(PAYLOAD[:-10], length=None), "truncated download"),  # no Content-Length, short body
    (send_bytes(PAYLOAD + b"x" * 10, length=None), "more than the expected"),  # no Content-Length, long body
    (send_bytes(PAYLOAD + b"x", chunk=4096), "announces"),  # wrong Content-Length
], ids=["cut", "short-no-length", "long-no-length", "wrong-length"])
def test_bad_body_is_rejected_and_cache_stays_clean(server: FlakyServer, home: Path, action, reason) -> None:
    spec = make_spec(sources=(server.route("/a", action),))
    with pytest.raises(DeepsegError, match=reason):
        download.ensure_model(spec, progress=False)
    assert leftovers(cached(spec, home).parent) == []


def test_truncated_then_complete_is_retried(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD, cut=1000), send_bytes(PAYLOAD)),))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits["/a"] == 2


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_html_instead_of_model(server: FlakyServer, home: Path, content_type: str) -> None:
    spec = make_spec(sources=(server.route("/a", html_page(content_type)),))
    with pytest.raises(DeepsegError, match="HTML page"):
        download.ensure_model(spec, progress=False)
    assert server.hits["/a"] == 1
    assert leftovers(cached(spec, home).parent) == []


def test_wrong_checksum_is_rejected_and_cache_stays_clean(server: FlakyServer, home: Path) -> None:
    other = bytes(b ^ 0xFF for b in PAYLOAD[:10]) + PAYLOAD[10:]  # same size, other bytes
    spec = make_spec(sources=(server.route("/a", send_bytes(other)),))
    with pytest.raises(DeepsegError, match=f"sha256 mismatch: got {hashlib.sha256(other).hexdigest()}"):
        download.ensure_model(spec, progress=False)
    assert server.hits["/a"] == 1
    assert leftovers(cached(spec, home).parent) == []
    with pytest.raises(DeepsegError, match="offline"):  # nothing was kept as valid
        download.ensure_model(spec, offline=True)


def test_server_down(home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/m.onnx"
    with pytest.raises(DeepsegError, match="Connection refused") as err:
        download.ensure_model(make_spec(sources=(url,)), progress=False)
    assert url in str(err.value)


def test_read_timeout(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", stall(30.0, announced=len(PAYLOAD))),))
    with pytest.raises(DeepsegError, match=rf"no data for {READ_TIMEOUT_S:g} s \(after {fetch.ATTEMPTS} attempts\)"):
        download.ensure_model(spec, progress=False)
    assert server.hits["/a"] == fetch.ATTEMPTS


def test_redirects_are_followed(server: FlakyServer, home: Path) -> None:
    server.route("/final", send_bytes(PAYLOAD))
    server.route("/hop", redirect("/final", 301))
    spec = make_spec(sources=(server.route("/start", redirect(server.url("/hop"))),))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits == {"/start": 1, "/hop": 1, "/final": 1}


def test_every_mirror_named_in_error(server: FlakyServer, home: Path) -> None:
    urls = (server.route("/a", status(404)), f"http://127.0.0.1:{free_port()}/b", server.route("/c", html_page()))
    with pytest.raises(DeepsegError) as err:
        download.ensure_model(make_spec(sources=urls), progress=False)
    message = str(err.value)
    assert all(url in message for url in urls)
    assert "HTTP 404" in message and "Connection refused" in message and "HTML" in message
    assert "\n" not in message


# ----------------------------------------------------------------------------- deadline and minimum rate


def test_trickling_server_hits_the_deadline(server: FlakyServer, home: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte at a time is never silent long enough for the read timeout: the deadline ends it,
    and no later mirror is tried (the deadline is for the whole model)."""
    fetch.READ_TIMEOUT_S = 60.0
    monkeypatch.setenv(fetch.ENV_DEADLINE, "1")
    monkeypatch.setenv(fetch.ENV_MIN_RATE, "0")
    urls = (server.route("/slow", trickle(0.02, len(PAYLOAD))), server.route("/later", send_bytes(PAYLOAD)))
    spec = make_spec(sources=urls)
    with pytest.raises(DeepsegError) as err:
        download.ensure_model(spec, progress=False)
    message = str(err.value)
    assert f"{urls[0]}: not done within the download deadline of 1 s; to allow more set {fetch.ENV_DEADLINE}" in message
    assert urls[1] not in message and server.hits["/later"] == 0
    assert "\n" not in message
    assert leftovers(cached(spec, home).parent) == []


def test_slow_server_below_the_minimum_rate_then_next_mirror(server: FlakyServer, home: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fetch.READ_TIMEOUT_S = 60.0
    fetch.RATE_WINDOW_S = 3.0  # a good transfer would have to stall this long to be taken as slow
    monkeypatch.setenv(fetch.ENV_MIN_RATE, "1000")  # the trickle sends at most ~50 bytes/s
    urls = (server.route("/slow", trickle(0.02, len(PAYLOAD))), server.route("/good", send_bytes(PAYLOAD)))
    spec = make_spec(sources=urls)
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits == {"/slow": 1, "/good": 1}  # too slow is not retried: the next mirror is


def test_below_the_minimum_rate_everywhere(server: FlakyServer, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fetch.READ_TIMEOUT_S = 60.0
    fetch.RATE_WINDOW_S = 0.5
    monkeypatch.setenv(fetch.ENV_MIN_RATE, "100000")  # the trickle sends at most ~50 bytes/s
    url = server.route("/slow", trickle(0.02, len(PAYLOAD)))
    spec = make_spec(sources=(url,))
    with pytest.raises(DeepsegError, match=rf"{url}: slower than 100000 bytes/s over 0.5 s; to accept slower transfers "
                                           rf"set {fetch.ENV_MIN_RATE}\."):
        download.ensure_model(spec, progress=False)
    assert leftovers(cached(spec, home).parent) == []


@pytest.mark.parametrize("name", [fetch.ENV_DEADLINE, fetch.ENV_MIN_RATE])
@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_bad_limit_setting_is_one_line(server: FlakyServer, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    with pytest.raises(DeepsegError, match=f"^{name} must be a number >= 0 \\(0 turns the limit off\\); got '{value}'$"):
        download.ensure_model(spec, progress=False)
    assert server.hits["/a"] == 0


def test_limits_can_be_turned_off(server: FlakyServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.ENV_DEADLINE, "0")
    monkeypatch.setenv(fetch.ENV_MIN_RATE, " 0 ")
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD, chunk=50_000, delay_s=0.05)),))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD


# ----------------------------------------------------------------------------- local files


def _bundle(tmp_path: Path, data: bytes) -> Path:
    registry_dir = tmp_path / "registry"
    (registry_dir / "models").mkdir(parents=True)
    (registry_dir / "models" / "model.onnx").write_bytes(data)
    return registry_dir


def test_bundled_source_used_in_place_and_verified_each_time(server: FlakyServer, home: Path, tmp_path: Path) -> None:
    registry_dir = _bundle(tmp_path, PAYLOAD)
    spec = make_spec(sources=("models/model.onnx", server.route("/a", send_bytes(PAYLOAD))), registry_dir=registry_dir)
    bundled = registry_dir / "models" / "model.onnx"
    assert download.ensure_model(spec, progress=False) == bundled
    assert server.hits["/a"] == 0
    assert not cached(spec, home).exists()  # no copy
    tamper_in_place(bundled)
    assert download.ensure_model(spec, progress=False) == cached(spec, home)  # not trusted: downloaded
    assert server.hits["/a"] == 1


def test_bad_cache_entry_behind_a_good_bundled_copy_is_repaired(home: Path, tmp_path: Path) -> None:
    spec = make_spec(sources=("models/model.onnx",), registry_dir=_bundle(tmp_path, PAYLOAD))
    entry = cached(spec, home)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(PAYLOAD[::-1])
    assert download.ensure_model(spec, offline=True) == tmp_path / "registry" / "models" / "model.onnx"
    assert entry.read_bytes() == PAYLOAD and leftovers(entry.parent) == ["model.onnx"]


def test_is_installed(server: FlakyServer, home: Path, tmp_path: Path) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    assert not download.is_installed(spec)
    download.ensure_model(spec, progress=False)
    assert download.is_installed(spec)
    cached(spec, home).write_bytes(PAYLOAD[:-1])
    assert not download.is_installed(spec)
    bundled = make_spec(sources=("models/model.onnx",), registry_dir=_bundle(tmp_path, PAYLOAD), name="b")
    assert download.is_installed(bundled)
    assert server.hits["/a"] == 1


def test_corrupt_bundled_source_falls_through_to_remote(server: FlakyServer, home: Path, tmp_path: Path) -> None:
    registry_dir = _bundle(tmp_path, PAYLOAD[::-1])  # same size, wrong content
    spec = make_spec(sources=("models/model.onnx", server.route("/a", send_bytes(PAYLOAD))), registry_dir=registry_dir)
    assert download.ensure_model(spec, progress=False) == cached(spec, home)
    assert server.hits["/a"] == 1


def test_git_lfs_pointer_is_explained(home: Path, tmp_path: Path) -> None:
    registry_dir = _bundle(tmp_path, b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    spec = make_spec(sources=("models/model.onnx",), registry_dir=registry_dir)
    with pytest.raises(DeepsegError, match="git lfs pull"):
        download.ensure_model(spec, progress=False)


def test_offline_with_nothing_cached_names_the_import_command(server: FlakyServer, home: Path) -> None:
    url = server.route("/a", send_bytes(PAYLOAD))
    spec = make_spec(sources=(url,))
    with pytest.raises(DeepsegError) as err:
        download.ensure_model(spec, offline=True)
    message = str(err.value)
    assert "imsct_deepseg -install" in message and "--from" in message and spec.sha256 in message
    assert str(cached(spec, home)) in message
    assert server.hits["/a"] == 0


def test_task_name_in_import_command(tmp_path: Path) -> None:
    from onnx_models import write_registry

    registry_dir = write_registry(tmp_path / "reg").parent
    spec = make_spec(sources=("https://example.invalid/m",), registry_dir=registry_dir, name="seg")
    with pytest.raises(DeepsegError, match="imsct_deepseg -install tumor_edema_cavity_t1_t2 --from"):
        download.ensure_model(spec, offline=True)


# ----------------------------------------------------------------------------- caches of earlier versions


def _old_cache(home: Path, spec: ModelSpec, data: bytes) -> Path:
    """The layout earlier versions wrote: the model, its .verified.json stamp, a .part of a killed
    download, the flock file, and stamps of bundled files."""
    folder = cached(spec, home).parent
    folder.mkdir(parents=True)
    path = folder / spec.file
    path.write_bytes(data)
    st = path.stat()
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
             "sha256": spec.sha256, "stamped_ns": st.st_mtime_ns + 10**10}
    (folder / f"{spec.file}.verified.json").write_text(json.dumps(stamp))
    (folder / f".{spec.file}.1234.abcd1234.part").write_bytes(data[:10])
    (folder / f".{spec.file}.flock").touch()
    (home / "stamps").mkdir()
    (home / "stamps" / "0123.json").write_text("{}")
    return path


def test_old_cache_keeps_working(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    path = _old_cache(home, spec, PAYLOAD)
    assert download.ensure_model(spec, offline=True) == path
    assert download.is_installed(spec)
    cache.clear_cache()
    assert not (home / "models").exists() and not (home / "stamps").exists()


def test_old_cache_with_a_stamp_that_lies_is_repaired_and_swept(server: FlakyServer, home: Path) -> None:
    """A stamp matching size, inode and mtime does not vouch for a file altered in place."""
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    path = _old_cache(home, spec, PAYLOAD)
    tamper_in_place(path)
    assert not download.is_installed(spec)
    assert download.ensure_model(spec, progress=False) == path
    assert path.read_bytes() == PAYLOAD and server.hits["/a"] == 1
    assert leftovers(path.parent) == ["model.onnx"]  # stamp and .part swept


# ----------------------------------------------------------------------------- -install (the command)


@pytest.fixture
def task_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FlakyServer) -> dict[str, Path]:
    """The analytic test registry with both models served only by ``server``: their cached paths."""
    from onnx_models import write_registry

    path = write_registry(tmp_path / "models")
    data = json.loads(path.read_text())
    paths = {}
    for name, model in data["models"].items():
        entry = model["versions"]["1.0"]
        local = tmp_path / "models" / entry["sources"][0]
        entry["sources"] = [server.route(f"/{name}.onnx", send_bytes(local.read_bytes()))]
        local.rename(tmp_path / f"{name}.onnx")  # away from the registry: downloads only
        paths[name] = tmp_path / "cache" / "models" / name / "1.0" / entry["file"]
    path.write_text(json.dumps(data))
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(path))
    return paths


def test_install_repairs_a_model_altered_in_place(task_registry: dict[str, Path], server: FlakyServer,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["-install"]) == 0
    assert server.hits == {"/loc.onnx": 1, "/seg.onnx": 1}
    good = task_registry["seg"].read_bytes()
    tamper_in_place(task_registry["seg"])
    capsys.readouterr()
    assert cli.main(["-install"]) == 0
    assert f"discarding invalid cached {task_registry['seg']}" in capsys.readouterr().err
    assert task_registry["seg"].read_bytes() == good
    assert server.hits == {"/loc.onnx": 1, "/seg.onnx": 2}
    assert cli.main(["-install"]) == 0  # nothing to do
    assert server.hits == {"/loc.onnx": 1, "/seg.onnx": 2}


def test_install_failure_is_one_line_and_exit_2(task_registry: dict[str, Path], server: FlakyServer,
                                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    fetch.READ_TIMEOUT_S = 60.0
    monkeypatch.setenv(fetch.ENV_DEADLINE, "0.5")
    server.route("/loc.onnx", trickle(0.02, 10**6))
    capsys.readouterr()
    assert cli.main(["-install", "-v", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("imsct_deepseg:")]
    assert len(err) == 1 and err[0].startswith("imsct_deepseg: error: cannot get model loc-1.0 (every download failed)")
    assert "download deadline of 0.5 s" in err[0]


# ----------------------------------------------------------------------------- import_model


def test_import_from_file_and_folder(home: Path, tmp_path: Path) -> None:
    spec = make_spec(sources=(f"http://127.0.0.1:{free_port()}/never",))
    source = tmp_path / "downloads" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    assert download.import_model(spec, source) == cached(spec, home)
    assert download.ensure_model(spec, offline=True).read_bytes() == PAYLOAD
    cache.clear_cache(spec)
    assert not cached(spec, home).exists()
    assert download.import_model(spec, source.parent).read_bytes() == PAYLOAD
    assert leftovers(cached(spec, home).parent) == ["model.onnx"]


def test_import_repairs_a_bad_cached_copy(home: Path, tmp_path: Path) -> None:
    spec = make_spec()
    source = tmp_path / "model.onnx"
    source.write_bytes(PAYLOAD)
    path = download.import_model(spec, source)
    tamper_in_place(path)
    assert download.import_model(spec, source) == path and path.read_bytes() == PAYLOAD
    assert download.import_model(spec, path) == path  # from the cache itself: nothing to do


def test_import_from_copied_cache_folder(home: Path, tmp_path: Path) -> None:
    spec = make_spec()
    other = tmp_path / "other_machine_cache" / "models" / spec.name / spec.version
    other.mkdir(parents=True)
    (other / spec.file).write_bytes(PAYLOAD)
    assert download.import_model(spec, tmp_path / "other_machine_cache").read_bytes() == PAYLOAD


@pytest.mark.parametrize("data, pattern", [
    (PAYLOAD[::-1], "sha256 {actual}, expected {expected}"),
    (PAYLOAD[:-1], "bytes, expected"),
], ids=["sha256", "size"])
def test_import_wrong_file(home: Path, tmp_path: Path, data: bytes, pattern: str) -> None:
    spec = make_spec()
    source = tmp_path / "model.onnx"
    source.write_bytes(data)
    with pytest.raises(DeepsegError) as err:
        download.import_model(spec, source)
    expected = pattern.format(actual=hashlib.sha256(data).hexdigest(), expected=spec.sha256)
    assert str(source) in str(err.value) and expected in str(err.value)
    assert leftovers(cached(spec, home).parent) == []


def test_import_missing_source(home: Path, tmp_path: Path) -> None:
    spec = make_spec()
    with pytest.raises(DeepsegError, match="does not exist"):
        download.import_model(spec, tmp_path / "nope.onnx")
    with pytest.raises(DeepsegError, match="holds no model.onnx"):
        download.import_model(spec, tmp_path)


# ----------------------------------------------------------------------------- cache folder


def test_cache_under_a_file_is_a_clear_error(server: FlakyServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("DEEPSEG_IMSCT_HOME", str(blocker / "cache"))
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    with pytest.raises(DeepsegError, match="DEEPSEG_IMSCT_HOME") as err:
        download.ensure_model(spec, progress=False)
    assert str(blocker / "cache") in str(err.value)
    assert server.hits["/a"] == 0


def test_read_only_cache(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    home.mkdir()
    home.chmod(0o555)
    try:
        if os.access(home, os.W_OK):
            pytest.skip("running as root: chmod does not make the folder read-only")
        with pytest.raises(DeepsegError, match="not writable.*DEEPSEG_IMSCT_HOME") as err:
            download.ensure_model(spec, progress=False)
        assert str(home) in str(err.value)
        assert server.hits["/a"] == 0
    finally:
        home.chmod(0o755)


def test_read_only_cache_with_verified_model_still_works(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    folder = download.ensure_model(spec, progress=False).parent
    folders = (folder, folder.parent, folder.parent.parent, home / "models", home)
    for path in folders:
        path.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod does not make the folder read-only (see the 'nobody' variant)")
        assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    finally:
        for path in folders:
            path.chmod(0o755)


@pytest.fixture
def root_owned_home(monkeypatch: pytest.MonkeyPatch):
    """A cache folder that root owns and 'nobody' can read but not write."""
    if not can_drop_privileges():
        pytest.skip("needs root (to drop privileges in a child)")
    with shared_folder() as base:
        home = base / "cache"
        home.mkdir(mode=0o755)
        monkeypatch.setenv("DEEPSEG_IMSCT_HOME", str(home))
        yield home


def test_read_only_cache_as_unprivileged_user(server: FlakyServer, root_owned_home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    code, message = as_nobody(lambda: str(download.ensure_model(spec, progress=False)))
    assert code == 1, message
    assert "not writable" in message and "DEEPSEG_IMSCT_HOME" in message and str(root_owned_home) in message
    assert server.hits["/a"] == 0


def test_read_only_cache_with_verified_model_as_unprivileged_user(server: FlakyServer, root_owned_home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    path = download.ensure_model(spec, progress=False)  # as root
    code, text = as_nobody(lambda: str(download.ensure_model(spec, progress=False)))
    assert (code, text) == (0, str(path))
    assert server.hits["/a"] == 1


def test_disk_full_while_downloading_leaves_nothing(server: FlakyServer, home: Path) -> None:
    """A write error (here the file-size limit, EFBIG) during the download: one line, no temp file."""
    resource = pytest.importorskip("resource")
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    cached(spec, home).parent.mkdir(parents=True)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(PAYLOAD) // 2, limits[1]))
    try:
        with pytest.raises(DeepsegError, match=r"cannot write into the model cache folder .* \(File too large\): free"):
            download.ensure_model(spec, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert leftovers(cached(spec, home).parent) == []


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEEPSEG_IMSCT_HOME", str(tmp_path / "x"))
    assert cache.cache_dir() == tmp_path / "x"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPSEG_IMSCT_HOME", "rel")
    assert cache.cache_dir() == tmp_path / "rel"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG layout")
def test_cache_dir_platform_default_is_the_earlier_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEEPSEG_IMSCT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "deepseg_imsct"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "deepseg_imsct"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG layout")
def test_cache_dir_falls_back_to_temp(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                      tmp_path: Path) -> None:
    monkeypatch.delenv("DEEPSEG_IMSCT_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)  # unwritable home
    with caplog.at_level(logging.WARNING, logger="deepseg_imsct.cache"):
        found = cache.cache_dir()
    assert found.parent == Path(cache.tempfile.gettempdir()) and found.name.startswith("deepseg_imsct-")
    assert "DEEPSEG_IMSCT_HOME" in caplog.text
    (home / ".cache" / "deepseg_imsct").mkdir(parents=True)  # an existing (read-only) cache is still used
    assert cache.cache_dir() == home / ".cache" / "deepseg_imsct"


@pytest.mark.parametrize("field, value, shown", [("file", "../../evil.onnx", "../../evil.onnx"),
                                                  ("name", "seg\0menter", "seg\\x00menter")])
def test_unsafe_file_name_in_registry(home: Path, field: str, value: str, shown: str) -> None:
    bad = ModelSpec(**{**make_spec().__dict__, field: value})
    with pytest.raises(DeepsegError, match=re.escape(f"unsafe name or file '{shown}'")):
        download.ensure_model(bad, offline=True)
    with pytest.raises(DeepsegError, match="unsafe"):
        download.is_installed(bad)


def test_clear_cache_all(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    download.ensure_model(spec, progress=False)
    cache.clear_cache()
    assert not (home / "models").exists()
    cache.clear_cache()  # nothing left: no error


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD * 5)
    assert checksums.sha256_file(path) == hashlib.sha256(PAYLOAD * 5).hexdigest()


# ----------------------------------------------------------------------------- locking, real processes


HOLD_LOCK = """
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_lock_held_by_another_process_times_out_with_clear_error(server: FlakyServer, home: Path) -> None:
    cache.LOCK_WAIT_S = 0.3
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    folder = cached(spec, home).parent
    folder.mkdir(parents=True)
    lock = folder / ".model.onnx.flock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DeepsegError, match="another process has been installing into") as err:
            download.ensure_model(spec, progress=False)
        assert str(lock) in str(err.value) and "\n" not in str(err.value)
        assert server.hits["/a"] == 0
    finally:
        holder.kill()
        holder.wait()
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD  # the kernel released it


def _child_ensure(spec: ModelSpec, home: str, barrier, results) -> None:
    os.environ["DEEPSEG_IMSCT_HOME"] = home
    _tune()
    barrier.wait(timeout=120)
    try:
        results.put(("ok", str(download.ensure_model(spec, progress=False))))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(("error", repr(exc)))


def test_concurrent_processes_download_once(server: FlakyServer, home: Path) -> None:
    # a slow download: long enough for the other processes to find the lock held
    url = server.route("/slow", send_bytes(PAYLOAD, chunk=len(PAYLOAD) // 12 + 1, delay_s=0.1))
    spec = make_spec(sources=(url,))
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_child_ensure, args=(spec, str(home), barrier, results)) for _ in range(3)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert outcomes == [("ok", str(cached(spec, home)))] * 3
    assert server.hits["/slow"] == 1
    assert cached(spec, home).read_bytes() == PAYLOAD
    assert leftovers(cached(spec, home).parent) == ["model.onnx"]


def test_killed_installer_leaves_nothing_the_next_one_keeps(server: FlakyServer, home: Path) -> None:
    """SIGKILL in the middle of a download: the lock dies with the process, its temp file is swept."""
    slow = make_spec(sources=(server.route("/m.onnx", trickle(0.05, len(PAYLOAD))),))  # never completes
    spec = make_spec(sources=(server.route("/good.onnx", send_bytes(PAYLOAD)),))  # the same model elsewhere
    folder = cached(spec, home).parent
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(1), ctx.Queue()
    proc = ctx.Process(target=_child_ensure, args=(slow, str(home), barrier, results))
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not (server.hits["/m.onnx"] and [p for p in folder.iterdir() if p.name.startswith("tmp")]):
            assert time.monotonic() < deadline and proc.is_alive(), "the child never started its download"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.join(timeout=30)
    assert [p.name for p in folder.iterdir() if p.name.startswith("tmp")]  # the killed run's temp file
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert leftovers(folder) == ["model.onnx"]


# ----------------------------------------------------------------------------- no network at all


@pytest.mark.parametrize("failure, reason", [
    ("dns", "Name or service not known"),
    ("unreachable", "Network is unreachable"),
], ids=["dns", "no-network"])
def test_no_network_names_the_url_and_the_import_command(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                         failure: str, reason: str) -> None:
    """DNS failure or no route at all: retried, then one message with the URL and the offline fix."""
    calls: list[str] = []

    def no_dns(host, *args, **kwargs):
        calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def unreachable(self, address):
        calls.append(address[0])
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    if failure == "dns":
        monkeypatch.setattr(socket, "getaddrinfo", no_dns)
        url = "http://models.deepseg-imsct.invalid/m.onnx"
    else:
        monkeypatch.setattr(socket.socket, "connect", unreachable)
        url = "http://192.0.2.1/m.onnx"  # TEST-NET-1: never routed
    spec = make_spec(sources=(url,))
    with pytest.raises(DeepsegError) as err:
        download.ensure_model(spec, progress=False)
    message = str(err.value)
    assert f"{url}: {reason} (after {fetch.ATTEMPTS} attempts)" in message
    assert "imsct_deepseg -install <task> --from" in message and str(cached(spec, home)) in message
    assert len(calls) == fetch.ATTEMPTS
    assert leftovers(cached(spec, home).parent) == []


# ----------------------------------------------------------------------------- registry entries


def _registry(tmp_path: Path, change) -> Path:
    """The analytic test registry with ``change(data)`` applied to its JSON."""
    from onnx_models import write_registry

    path = write_registry(tmp_path / "reg")
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _seg(data: dict) -> dict:
    return data["models"]["seg"]["versions"]["1.0"]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["tasks"]["tumor_edema_cavity_t1_t2"].pop("segmenter"),
     r"model registry .*model_registry.json is malformed \(missing or bad field 'segmenter'\): reinstall deepseg-imsct"),
    (lambda d: _seg(d).pop("file"),
     r"model 'seg' version '1.0' in .* lacks the field 'file': fix the registry or reinstall deepseg-imsct"),
    (lambda d: _seg(d).update(patch_size=[32, 32]),
     r"model 'seg' version '1.0' .* has a malformed field \(patch_size must be 3 positive numbers, got \[32, 32\]\)"),
    (lambda d: _seg(d).update(size="big"), r"has a malformed field \(invalid literal for int"),
    (lambda d: _seg(d).update(sha256="abc"), r"needs a 64-hex sha256 \(or a 40-hex blob_sha1\), sources, classes and contrasts: fix the registry"),
    (lambda d: _seg(d).update(sources=[]), r"needs a 64-hex sha256 \(or a 40-hex blob_sha1\), sources"),
    (lambda d: _seg(d).update(normalization="minmax"),
     r"asks for normalization 'minmax', which this version cannot do: upgrade deepseg-imsct"),
    (lambda d: d["models"].pop("seg"), r"model 'seg' has no versions in .*: reinstall deepseg-imsct"),
], ids=["task-field-missing", "model-field-missing", "bad-patch", "bad-size", "bad-sha", "no-sources",
        "normalization", "model-missing"])
def test_registry_with_a_missing_or_malformed_field(tmp_path: Path, change, message: str) -> None:
    from deepseg_imsct.registry import load_registry

    path = _registry(tmp_path, change)
    with pytest.raises(DeepsegError, match=message) as err:
        reg = load_registry(path)
        task = reg.task("tumor_edema_cavity_t1_t2")
        reg.model(task.segmenter)
    assert str(path) in str(err.value)


def test_registry_file_problems_name_the_file_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepseg_imsct.registry import load_registry

    broken = tmp_path / "model_registry.json"
    broken.write_text("{not json")
    with pytest.raises(DeepsegError, match=f"model registry {broken} is unreadable .*: reinstall deepseg-imsct"):
        load_registry(broken)
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(tmp_path / "missing.json"))
    with pytest.raises(DeepsegError, match=f"model registry not found: {tmp_path / 'missing.json'}: "
                                           "fix or unset DEEPSEG_IMSCT_REGISTRY"):
        load_registry()
    with pytest.raises(DeepsegError, match=r"model 'seg' has no version '9.9' in .*: available 1.0"):
        load_registry(_registry(tmp_path, lambda d: None)).model("seg", "9.9")
