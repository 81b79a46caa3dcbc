"""Model weights: find, verify, download and import them into the model cache (:mod:`cache`).

A model file is usable only when its size and sha256 match the registry, and it is hashed each time
it is about to be used (~35 ms per model): a file altered in place is never trusted. ``ensure_model``
looks in the per-user cache, then at a file bundled next to the registry (used in place), then
downloads from the registry's mirrors (fetch.py; a published model's folder: archive.py) into the
cache under its lock (:func:`cache.install`). No telemetry: the only network traffic is the GET of
the registry's URLs.

pooch, filelock and requests are imported only to install: a run that finds its models imports none.

API: ``ensure_model``, ``is_installed``, ``verified_spec``, ``import_model``; the cache itself
(``cache_dir``, ``clear_cache``): :mod:`cache`; checksums: :mod:`checksums`.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

from .cache import cached_path, file_problem, find_local, install, path_exists
from .errors import DeepsegError
from .registry import ModelSpec

log = logging.getLogger(__name__)

def ensure_model(spec: ModelSpec, *, offline: bool = False, progress: bool = True) -> Path:
    """A local file whose size and sha256 match ``spec``: cached, bundled, else downloaded.

    An entry known by its git blob SHA-1 only (a published model folder, see :mod:`archive`) is
    checked by the sha256 and size recorded at its first verified install, else by that hash."""
    target = cached_path(spec)
    spec = verified_spec(spec)
    problems: list[str] = []
    local = find_local(spec, target, problems)
    if local is not None:
        if local != target and path_exists(target):  # a bad cache entry behind a good bundled copy: repair it
            with contextlib.suppress(DeepsegError):
                import_model(spec, local)
        return local
    if offline:
        seen = f" (checked: {'; '.join(problems)})" if problems else ""
        raise DeepsegError(f"model {spec.key} is not installed in {target} and offline mode forbids downloading "
                           f"it{seen}: {_import_hint(spec, target)}")
    if not spec.remote_sources():
        raise DeepsegError(_failure_message(spec, target, problems, "no download URL in the registry"))

    def get() -> None:
        from . import archive, fetch

        errors = archive.download(spec, target, progress) if spec.blob_sha1 else fetch.download(spec, target, progress)
        if errors:
            raise DeepsegError(_failure_message(spec, target, problems + errors, "every download failed"))
    return install(spec, target, get)


def is_installed(spec: ModelSpec) -> bool:
    """Whether a verified copy is cached or bundled (no network; hashes the file)."""
    return find_local(verified_spec(spec), cached_path(spec), []) is not None


def verified_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` with the sha256 and size recorded when its blob-verified file was installed."""
    from .archive import with_record

    return with_record(spec, cached_path(spec))


def import_model(spec: ModelSpec, source: Path | str) -> Path:
    """Install ``spec`` offline from a file, or a folder holding it; verified, copied atomically."""
    from . import fetch

    src = _import_source(spec, Path(source).expanduser())
    target = cached_path(spec)
    if spec.blob_sha1:
        return _import_blob(spec, src, target)
    try:
        problem = file_problem(src, spec)
        if problem is not None:
            raise fetch.FetchError(problem)
        install(spec, target, lambda: fetch.retrieve(src.as_uri(), spec, target, lambda _u, out, _p: shutil.copyfile(src, out)))
    except fetch.FetchError as exc:
        where = " or ".join(spec.remote_sources()) or "the model release"
        raise DeepsegError(f"{src} is not {spec.key}: {exc}: get the right file from {where}") from None
    log.info("installed %s from %s into %s", spec.key, src, target)
    return target


def _import_blob(spec: ModelSpec, src: Path, target: Path) -> Path:
    """Install a blob-verified model from its file or a zip archive of its folder."""
    from . import archive

    def get() -> None:
        try:
            if src.name.lower().endswith(".zip"):
                archive.extract_verified(src, spec, target)
            else:
                with open(src, "rb") as fh:
                    archive.place_verified(fh, spec, target)
        except ValueError as exc:
            where = " or ".join(spec.remote_sources()) or "the model release"
            raise DeepsegError(f"{src} is not {spec.key}: {exc}: get the right file from {where}") from None
    install(spec, target, get)
    log.info("installed %s from %s into %s", spec.key, src, target)
    return target


def _import_source(spec: ModelSpec, source: Path) -> Path:
    """The file to import: ``source`` itself, or ``spec.file`` inside it (flat or cache layout)."""
    if source.is_file():
        return source
    if not source.is_dir():
        raise DeepsegError(f"{source} does not exist: pass the downloaded {spec.file} or the folder that contains it")
    for candidate in (source / spec.file, source / spec.name / spec.file, source / spec.name / spec.version / spec.file,
                      source / "models" / spec.name / spec.version / spec.file):
        if candidate.is_file():
            return candidate
    raise DeepsegError(f"{source} holds no {spec.file} (nor {spec.name}/{spec.version}/{spec.file}): pass the model "
                       "file itself or the folder that contains it")


# ----------------------------------------------------------------------------- messages


def _import_hint(spec: ModelSpec, target: Path) -> str:
    from .registry import load_registry

    task = "<task>"  # the task (and model set) that uses this model, for the -install command
    path = spec.registry_dir / "model_registry.json"
    with contextlib.suppress(DeepsegError):
        registry = load_registry(path if path.is_file() else None)
        for t in registry.tasks.values():
            found = [s for s in ("phantom", *t.model_sets) if spec.name in t.models(s)]
            if found:
                task = t.name + ("" if found[0] == "phantom" else f" -model-set {found[0]}")
                break
    checksum = (f"sha256 {spec.sha256}, {spec.size} bytes" if spec.sha256 else
                f"git blob SHA-1 {spec.blob_sha1}, in {' or '.join(spec.remote_sources()) or 'its release'}")
    return (f"download {spec.file} ({checksum}) on a machine with internet and run "
            f"`imsct_deepseg -install {task} --from <file-or-folder>`, or copy it to {target}")


def _failure_message(spec: ModelSpec, target: Path, problems: list[str], what: str) -> str:
    tried = f": {'; '.join(problems)}" if problems else ""
    return (f"cannot get model {spec.key} ({what}){tried}. Fix: check the network or proxy (HTTPS_PROXY), or "
            f"{_import_hint(spec, target)}")
