"""Tests of deepseg_imsct.download against a real, misbehaving HTTP server on 127.0.0.1."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from http_server import FlakyServer, free_port, html_page, redirect, send_bytes, stall, status
from unprivileged import as_nobody, can_drop_privileges, shared_folder

from deepseg_imsct import download
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.registry import ModelSpec

PAYLOAD = b"\x08\x07\x12\x04onnx" + os.urandom(300_000)
READ_TIMEOUT_S = 0.4


def make_spec(payload: bytes = PAYLOAD, sources: tuple[str, ...] = (), registry_dir: Path | None = None,
              name: str = "m", version: str = "1.0") -> ModelSpec:
    return ModelSpec(
        name=name, version=version, file="model.onnx", sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload), sources=tuple(sources), contrasts=("t2",), spacing_mm=(1.0, 1.0, 2.0),
        patch_size=(8, 8, 8), stride=(8, 8, 8), classes=("tumor",), normalization="zscore", postprocessing={},
        registry_dir=registry_dir or Path("/nonexistent-registry"),
    )


def _tune(lock_method: str = "auto") -> None:
    """Short timings for tests (also called in spawned children)."""
    download.CONNECT_TIMEOUT_S = 2.0
    download.READ_TIMEOUT_S = READ_TIMEOUT_S
    download.BACKOFF_S = 0.01
    download.LOCK_POLL_S = 0.02
    download.LOCK_WAIT_S = 20.0
    download.LOCK_METHOD = lock_method


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPSEG_IMSCT_HOME", str(cache))
    for name in ("CONNECT_TIMEOUT_S", "READ_TIMEOUT_S", "BACKOFF_S", "LOCK_POLL_S", "LOCK_WAIT_S", "LOCK_METHOD"):
        monkeypatch.setattr(download, name, getattr(download, name))  # restored after the test
    _tune()
    return cache


@pytest.fixture
def server():
    with FlakyServer(lifetime_s=60) as srv:
        yield srv


def cached(spec: ModelSpec, home: Path) -> Path:
    return home / "models" / spec.name / spec.version / spec.file


def leftovers(folder: Path) -> list[str]:
    """Files in a cache folder other than lock files (no model, no temp file may remain)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".flock", ".lock")))


def age_file(path: Path, seconds: float = 3600) -> None:
    old = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(old, old))


# ----------------------------------------------------------------------------- download paths


def test_download_then_cache_hit_without_request(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/m.onnx", send_bytes(PAYLOAD)),))
    path = download.ensure_model(spec, progress=False)
    assert path == cached(spec, home)
    assert path.read_bytes() == PAYLOAD
    assert download.ensure_model(spec, progress=True) == path
    assert server.hits["/m.onnx"] == 1
    assert leftovers(path.parent) == ["model.onnx", "model.onnx.verified.json"]


def test_stamp_skips_rehash_until_file_changes(server: FlakyServer, home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(sources=(server.route("/m.onnx", send_bytes(PAYLOAD)),))
    path = download.ensure_model(spec, progress=False)
    age_file(path)  # as on a later day: mtime well before the next stamp
    download.ensure_model(spec, progress=False)  # re-hashes once (mtime changed), stamps
    calls: list[Path] = []
    real = download.sha256sum
    monkeypatch.setattr(download, "sha256sum", lambda p: calls.append(Path(p)) or real(p))
    assert download.ensure_model(spec, progress=False) == path
    assert calls == []  # trusted stamp: no hashing
    age_file(path, 7200)  # touched: the stamp no longer matches
    assert download.ensure_model(spec, progress=False) == path
    assert calls == [path]
    assert server.hits["/m.onnx"] == 1


def test_404_then_next_mirror(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", status(404)), server.route("/b", send_bytes(PAYLOAD))))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits == {"/a": 1, "/b": 1}  # a 404 is not retried


def test_500_then_success_retries(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", status(500), status(503), send_bytes(PAYLOAD)),))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits["/a"] == 3


def test_persistent_5xx_gives_up_after_attempts(server: FlakyServer, home: Path) -> None:
    url = server.route("/a", status(503))
    with pytest.raises(DeepsegError, match="HTTP 503") as err:
        download.ensure_model(make_spec(sources=(url,)), progress=False)
    assert url in str(err.value) and "imsct_deepseg -install" in str(err.value)
    assert server.hits["/a"] == download.ATTEMPTS


@pytest.mark.parametrize("action, reason", [
    (send_bytes(PAYLOAD, cut=len(PAYLOAD) // 2), "IncompleteRead|truncated|Connection broken"),
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
    spec = make_spec(sources=(server.route("/a", stall(10.0, announced=len(PAYLOAD))),))
    start = time.monotonic()
    with pytest.raises(DeepsegError, match=r"timed out|no data"):
        download.ensure_model(spec, progress=False)
    assert time.monotonic() - start < download.ATTEMPTS * (READ_TIMEOUT_S + 0.5) + 1
    assert server.hits["/a"] == download.ATTEMPTS


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


# ----------------------------------------------------------------------------- local files


def _bundle(tmp_path: Path, data: bytes) -> Path:
    registry_dir = tmp_path / "registry"
    (registry_dir / "models").mkdir(parents=True)
    (registry_dir / "models" / "model.onnx").write_bytes(data)
    return registry_dir


def test_bundled_source_used_in_place(server: FlakyServer, home: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    registry_dir = _bundle(tmp_path, PAYLOAD)
    spec = make_spec(sources=("models/model.onnx", server.route("/a", send_bytes(PAYLOAD))), registry_dir=registry_dir)
    bundled = registry_dir / "models" / "model.onnx"
    assert download.ensure_model(spec, progress=False) == bundled
    assert server.hits["/a"] == 0
    assert not cached(spec, home).exists()  # no copy
    age_file(bundled)
    download.ensure_model(spec, progress=False)  # stamps the (now old) file
    monkeypatch.setattr(download, "sha256sum", lambda p: pytest.fail(f"re-hashed {p}"))
    assert download.ensure_model(spec, offline=True) == bundled  # trusted stamp


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


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_file_is_fetched_again(server: FlakyServer, home: Path, damage: str) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    path = download.ensure_model(spec, progress=False)
    data = path.read_bytes()
    path.write_bytes(data[:100] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits["/a"] == 2


def test_change_within_timestamp_granularity_is_detected(server: FlakyServer, home: Path) -> None:
    """A same-size change that keeps mtime (same clock tick) must not hide behind a fresh stamp."""
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    path = download.ensure_model(spec, progress=False)
    st = path.stat()
    with open(path, "r+b") as fh:  # same inode, same size
        fh.write(b"\xff\xff")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits["/a"] == 2


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
    registry_dir = tmp_path / "reg"
    registry_dir.mkdir()
    (registry_dir / "model_registry.json").write_text(json.dumps({"tasks": {"seg_x": {
        "description": "d", "contrasts": ["t2"], "localizer": "loc", "segmenter": "m"}}, "models": {}}))
    with pytest.raises(DeepsegError, match="imsct_deepseg -install seg_x --from"):
        download.ensure_model(make_spec(sources=("https://example.invalid/m",), registry_dir=registry_dir),
                              offline=True)


# ----------------------------------------------------------------------------- import_model


def test_import_from_file_and_folder(home: Path, tmp_path: Path) -> None:
    spec = make_spec(sources=(f"http://127.0.0.1:{free_port()}/never",))
    source = tmp_path / "downloads" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    assert download.import_model(spec, source) == cached(spec, home)
    assert download.ensure_model(spec, offline=True).read_bytes() == PAYLOAD
    download.clear_cache(spec)
    assert not cached(spec, home).exists()
    assert download.import_model(spec, source.parent).read_bytes() == PAYLOAD
    assert leftovers(cached(spec, home).parent) == ["model.onnx", "model.onnx.verified.json"]


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
    assert (code, text) == (0, str(path))  # re-verified, stamp not writable: still fine
    assert server.hits["/a"] == 1


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEEPSEG_IMSCT_HOME", str(tmp_path / "x"))
    assert download.cache_dir() == tmp_path / "x"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPSEG_IMSCT_HOME", "rel")
    assert download.cache_dir() == tmp_path / "rel"


@pytest.mark.skipif(os.name != "posix", reason="POSIX home layout")
def test_cache_dir_platform_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEEPSEG_IMSCT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert download.cache_dir() == tmp_path / "home" / ".cache" / "deepseg_imsct"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "deepseg_imsct"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert download.cache_dir() == tmp_path / "home" / ".cache" / "deepseg_imsct"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert download.cache_dir() == tmp_path / "home" / "Library" / "Caches" / "deepseg_imsct"


def test_cache_dir_windows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEEPSEG_IMSCT_HOME")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    monkeypatch.setattr(sys, "platform", "win32")
    assert download.cache_dir() == tmp_path / "Local" / "deepseg_imsct"


@pytest.mark.skipif(os.name != "posix", reason="POSIX home layout")
def test_cache_dir_falls_back_to_temp(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                      tmp_path: Path) -> None:
    monkeypatch.delenv("DEEPSEG_IMSCT_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("HOME", "/")
    with caplog.at_level(logging.WARNING, logger="deepseg_imsct.download"):
        found = download.cache_dir()
    assert found.parent == Path(download.tempfile.gettempdir()) and found.name.startswith("deepseg_imsct-")
    assert "DEEPSEG_IMSCT_HOME" in caplog.text
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(download.os, "access", lambda path, mode: False)  # unwritable home
    assert download.cache_dir().parent == Path(download.tempfile.gettempdir())
    (home / ".cache" / "deepseg_imsct").mkdir(parents=True)  # an existing (read-only) cache is still used
    assert download.cache_dir() == home / ".cache" / "deepseg_imsct"


def test_unsafe_file_name_in_registry(home: Path) -> None:
    spec = make_spec()
    bad = ModelSpec(**{**spec.__dict__, "file": "../../evil.onnx"})
    with pytest.raises(DeepsegError, match="unsafe"):
        download.ensure_model(bad, offline=True)


def test_clear_cache_all(server: FlakyServer, home: Path) -> None:
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    download.ensure_model(spec, progress=False)
    download.clear_cache()
    assert not (home / "models").exists()
    download.clear_cache()  # nothing left: no error


def test_sha256sum(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD * 5)
    assert download.sha256sum(path) == hashlib.sha256(PAYLOAD * 5).hexdigest()


# ----------------------------------------------------------------------------- locking


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("holder", ["dead_pid", "old_lock"])
def test_stale_excl_lock_is_broken(server: FlakyServer, home: Path, holder: str) -> None:
    download.LOCK_METHOD = "excl"
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    folder = cached(spec, home).parent
    folder.mkdir(parents=True)
    lock = folder / ".model.onnx.lock"
    pid = _dead_pid() if holder == "dead_pid" else os.getpid()
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "token": "x"}))
    if holder == "old_lock":
        age_file(lock, download.LOCK_STALE_S + 60)
    assert download.ensure_model(spec, progress=False).read_bytes() == PAYLOAD
    assert not lock.exists()


def test_live_excl_lock_times_out_with_clear_error(server: FlakyServer, home: Path) -> None:
    download.LOCK_METHOD = "excl"
    download.LOCK_WAIT_S = 0.3
    spec = make_spec(sources=(server.route("/a", send_bytes(PAYLOAD)),))
    folder = cached(spec, home).parent
    folder.mkdir(parents=True)
    lock = folder / ".model.onnx.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": "x"}))
    with pytest.raises(DeepsegError, match="another process") as err:
        download.ensure_model(spec, progress=False)
    assert str(lock) in str(err.value)
    assert lock.exists() and server.hits["/a"] == 0


def _child_ensure(spec: ModelSpec, home: str, lock_method: str, barrier, results) -> None:
    os.environ["DEEPSEG_IMSCT_HOME"] = home
    _tune(lock_method)
    barrier.wait(timeout=60)
    try:
        results.put(("ok", str(download.ensure_model(spec, progress=False))))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(("error", repr(exc)))


@pytest.mark.parametrize("lock_method", [
    pytest.param("flock", marks=pytest.mark.skipif(download.fcntl is None, reason="no fcntl")),
    "excl",
])
def test_concurrent_processes_download_once(server: FlakyServer, home: Path, lock_method: str) -> None:
    # ~1.2 s download: long enough for the other processes to find the lock held
    url = server.route("/slow", send_bytes(PAYLOAD, chunk=len(PAYLOAD) // 12 + 1, delay_s=0.1))
    spec = make_spec(sources=(url,))
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_child_ensure, args=(spec, str(home), lock_method, barrier, results))
             for _ in range(3)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    assert outcomes == [("ok", str(cached(spec, home)))] * 3
    assert server.hits["/slow"] == 1
    assert cached(spec, home).read_bytes() == PAYLOAD
    assert leftovers(cached(spec, home).parent) == ["model.onnx", "model.onnx.verified.json"]


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
    assert f"{url}: {reason} (after {download.ATTEMPTS} attempts)" in message
    assert "imsct_deepseg -install <task> --from" in message and str(cached(spec, home)) in message
    assert len(calls) == download.ATTEMPTS
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
    (lambda d: d["tasks"]["seg_tumor-edema-cavity_t1-t2"].pop("segmenter"),
     r"model registry .*model_registry.json is malformed \(missing or bad field 'segmenter'\): reinstall deepseg-imsct"),
    (lambda d: _seg(d).pop("sha256"),
     r"model 'seg' version '1.0' in .* lacks the field 'sha256': fix the registry or reinstall deepseg-imsct"),
    (lambda d: _seg(d).update(patch_size=[32, 32]),
     r"model 'seg' version '1.0' .* has a malformed field \(patch_size must be 3 positive numbers, got \[32, 32\]\)"),
    (lambda d: _seg(d).update(size="big"), r"has a malformed field \(invalid literal for int"),
    (lambda d: _seg(d).update(sha256="abc"), r"needs a 64-hex sha256, sources, classes and contrasts: fix the registry"),
    (lambda d: _seg(d).update(sources=[]), r"needs a 64-hex sha256, sources"),
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
