"""Agreement with the reference implementation: ivadomed's ``segment_volume`` cascade against this
package's pipeline with the reference semantics, on the same ONNX models in ivadomed folder layout.

Model sets (``--models``):
- ``ours``: this project's phantom models (models/), each with an ivadomed config written from
  its registry entry (localizer: Resample to its spacing, CenterCrop to its block, keep_largest;
  segmenter: 0.5 / remove_small 100 vox / fill_holes, safety 1.2/1.2/1.0);
- ``published``: the study's two published models, installed by the package from their tag
  archives (network needed once; verified by git blob SHA-1), with the configs the archives hold;
- ``random``: small random-weight graphs (3x3x3 convolution + sigmoid) with the published models'
  signature ('input' [N,1|2,H,W,D] -> 'output' [N,1|4,H,W,D]) and the published r20201215
  configs (tests/fixtures/ivadomed).
The package's registry entries are made from the same configs by ``toolbox.entry_from_config``.
The localizer's RandomAffine is removed from the configs (ivadomed applies it at inference,
randomly) unless ``--random-affine``.

Cases: the phantom of testing_data, and the real scans of the shared data (../shared/data or
$IMSCT_SHARED_DATA) with a second channel on the T2w's grid (ivadomed stacks channels without
resampling): the subject's T1w resampled onto it, or, for a T2w alone, itself at half the intensity.

Run (bench-only environment, see bench/README.md):
    .venv-ivadomed/bin/python bench/compare_ivadomed.py [--models ours random] [-o runs/compare-ivadomed]
Prints a markdown table: Dice per class (and of the localizer's mask) between the two.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.abc
import importlib.machinery
import json
import hashlib
import os
import shutil
import sys
import time
import types
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
FIXTURES = REPO / "tests" / "fixtures" / "ivadomed"
# imported by ivadomed's modules but not used on its inference path: stubbed (see bench/README.md)
STUBS = ("wandb", "torchio", "sklearn", "torch.utils.tensorboard")
TASK = "seg_tumor-edema-cavity_t1-t2"


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if any(name == s or name.startswith(s + ".") for s in STUBS):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attribute(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {"__init__": lambda self, *a, **k: None})
        module.__getattr__ = attribute
        return module

    def exec_module(self, module):
        pass


def import_ivadomed():
    """ivadomed.inference with its unused imports stubbed and torchvision's missing compiled ops
    tolerated (ivadomed only uses torchvision.transforms.Compose)."""
    import torch.library

    sys.meta_path.insert(0, _Stubs())
    original = torch.library.register_fake

    def tolerant(op, *args, **kwargs):
        try:
            decorate = original(op, *args, **kwargs)
        except RuntimeError:
            return lambda f: f

        def apply(f):
            try:
                return decorate(f)
            except RuntimeError:
                return f
        return apply
    torch.library.register_fake = tolerant
    import ivadomed.inference as inference

    return inference


def random_conv(path: Path, channels: int, classes: int, seed: int) -> None:
    """A 3x3x3 convolution (no bias) + sigmoid with random weights, dynamic spatial axes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(0, 1.0 / np.sqrt(27 * channels), (classes, channels, 3, 3, 3)) * 4
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, "H", "W", "D"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes, "H", "W", "D"])
    nodes = [helper.make_node("Conv", ["input", "w"], ["z"], pads=[1] * 6), helper.make_node("Sigmoid", ["z"], ["output"])]
    graph = helper.make_graph(nodes, "random", [x], [y], [numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    path.write_bytes(model.SerializeToString())


def our_configs() -> dict[str, dict]:
    """ivadomed configs of this project's shipped models, from their registry entries."""
    from deepseg_imsct.registry import load_registry

    reg = load_registry(REPO / "model_registry.json")
    loc, seg = (reg.model(m) for m in reg.task(TASK).models())
    out = {}
    for spec, base in ((loc, "findcord_tumor"), (seg, "model_seg_sctumor-edema-cavity_t2-t1_unet3d-multichannel")):
        cfg = json.loads((FIXTURES / f"{base}.json").read_text())
        cfg["transformation"]["Resample"] |= dict(zip(("hspace", "wspace", "dspace"), spec.spacing_mm))
        if "CenterCrop" in cfg["transformation"]:
            cfg["transformation"]["CenterCrop"]["size"] = list(spec.patch_size)
        cfg.pop("UNet3D", None)
        cfg["Modified3DUNet"] = {"applied": True, "length_3D": list(spec.patch_size), "stride_3D": list(spec.stride), "attention": False}
        out[spec.file[:-5]] = (cfg, REPO / "models" / spec.file)
    return out


def published_models() -> dict[str, tuple[dict, Path]]:
    """The published models (model set 'sct'), installed by the package: downloaded from their tag
    archives and verified by their git blob SHA-1 (needs the network once), with the config each
    archive holds (else the r20201215 transcription of tests/fixtures)."""
    from deepseg_imsct.download import ensure_model
    from deepseg_imsct.registry import load_registry

    reg = load_registry(REPO / "model_registry.json")
    out = {}
    for name in reg.task(TASK).models("sct"):
        path = ensure_model(reg.model(name), progress=True)
        config = path.with_suffix(".json") if path.with_suffix(".json").is_file() else FIXTURES / f"{name}.json"
        out[name] = (json.loads(config.read_text()), path)
    return out


def model_folders(kind: str, root: Path, random_affine: bool) -> list[Path]:
    """Two ivadomed model folders (localizer, segmenter) under ``root``."""
    if kind == "ours":
        items = our_configs()
    elif kind == "published":
        items = published_models()
    else:
        items = {}
        for base, (c, k) in (("findcord_tumor", (1, 1)), ("model_seg_sctumor-edema-cavity_t2-t1_unet3d-multichannel", (2, 4))):
            (root / "src").mkdir(parents=True, exist_ok=True)
            random_conv(root / "src" / f"{base}.onnx", c, k, seed=c)
            items[base] = (json.loads((FIXTURES / f"{base}.json").read_text()), root / "src" / f"{base}.onnx")
    folders = []
    for name, (cfg, onnx) in items.items():
        cfg = copy.deepcopy(cfg)
        if "UNet3D" in cfg:  # ivadomed's config manager renames it; written here as it reads it
            cfg["Modified3DUNet"] = cfg.pop("UNet3D")
        cfg.setdefault("Modified3DUNet", {}).setdefault("applied", True)
        cfg.setdefault("training_parameters", {})["batch_size"] = 1
        if not random_affine:
            cfg["transformation"].pop("RandomAffine", None)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx, folder / f"{name}.onnx")
        (folder / f"{name}.json").write_text(json.dumps(cfg, indent=1))
        folders.append(folder)
    return folders


def package_registry(folders: list[Path], path: Path) -> Path:
    """A registry whose 'sct' set is the two folders, mapped by toolbox.entry_from_config."""
    from deepseg_imsct.toolbox import entry_from_config

    models = {}
    for folder in folders:
        onnx = folder / f"{folder.name}.onnx"
        entry, _ = entry_from_config(json.loads((folder / f"{folder.name}.json").read_text()), onnx.name)
        data = onnx.read_bytes()
        entry |= {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "sources": [str(onnx.resolve())]}
        models[folder.name] = {"default_version": "bench", "versions": {"bench": entry}}
    names = [f.name for f in folders]
    task = {"aliases": [], "description": "bench", "contrasts": ["t2", "t1"], "localizer": names[0], "segmenter": names[1]}
    path.write_text(json.dumps({"schema": 1, "tasks": {TASK: task}, "models": models}, indent=1))
    return path


def cases(out: Path) -> dict[str, tuple[Path, Path]]:
    """{name: (T2w, second channel on the T2w's grid)} written under ``out``."""
    from deepseg_imsct.grid import Grid, resample

    data = Path(os.environ.get("IMSCT_SHARED_DATA", REPO.parent / "shared" / "data")) / "real"
    pairs = {"phantom sub-test01": (REPO / "testing_data/sub-test01/anat/sub-test01_T2w.nii.gz",
                                    REPO / "testing_data/sub-test01/anat/sub-test01_T1w.nii.gz"),
             "real t2 + t1w": (data / "sct_testing_data/t2/t2.nii.gz", data / "sct_testing_data/t1/t1w.nii.gz"),
             "real t2_lumbar": (data / "sct_tutorial_data/t2_lumbar.nii.gz", None)}
    made = {}
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, (t2, t1)) in enumerate(pairs.items()):
        if not t2.exists():
            print(f"skipped {name}: {t2} is absent", file=sys.stderr)
            continue
        ref = nib.load(t2)
        if t1 is None:  # a second channel for a T2w alone: itself at half the intensity (a copy is refused)
            second = np.asarray(ref.dataobj, np.float32) * 0.5
        else:
            img = nib.load(t1)
            second = resample(np.asarray(img.dataobj, np.float32), Grid.of(img), Grid.of(ref), order=1, fill=0.0)
        paths = out / f"case{i}_T2w.nii.gz", out / f"case{i}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(ref.dataobj, np.float32), ref.affine, ref.header), paths[0])
        nib.save(nib.Nifti1Image(second.astype(np.float32), ref.affine, ref.header), paths[1])
        made[name] = paths
    return made


@contextlib.contextmanager
def no_contrast_check():
    """The package's contrast-order check (an addition of this package) switched off: random
    models find 'cords' whose surroundings can look like swapped contrasts."""
    from deepseg_imsct import localize

    saved = localize.check_order
    localize.check_order = lambda *args: None
    try:
        yield
    finally:
        localize.check_order = saved


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def run_ivadomed(inference, folders: list[Path], t2: Path, t1: Path, work: Path) -> tuple[np.ndarray, list[np.ndarray], float]:
    t0 = time.perf_counter()
    preds, _ = inference.segment_volume(str(folders[0]), [str(t2)], gpu_id=0)
    prior = work / "prior_sc-mask.nii.gz"
    nib.save(preds[0], prior)
    preds2, _ = inference.segment_volume(str(folders[1]), [str(t2), str(t1)], gpu_id=0, options={"fname_prior": str(prior)})
    return np.asanyarray(preds[0].dataobj), [np.asanyarray(p.dataobj) for p in preds2], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["ours", "random"], choices=["ours", "random", "published"],
                        help="published: the study's models, downloaded once (network)")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "runs" / "compare-ivadomed")
    parser.add_argument("--random-affine", action="store_true", help="keep the localizer's RandomAffine (stochastic)")
    args = parser.parse_args()
    args.out = args.out.resolve()
    inference = import_ivadomed()
    from deepseg_imsct.errors import DeepsegError
    from deepseg_imsct.pipeline import Predictor
    from deepseg_imsct.registry import load_registry

    if "published" not in args.models:  # the published models install into the user's own cache
        os.environ["DEEPSEG_IMSCT_HOME"] = str(args.out / "cache")
    data = cases(args.out / "cases")
    print("| models | case | localizer | tumor | edema | cavity | whole-tumor | voxels (ivadomed / ours, whole) | s ivadomed / ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in args.models:
        folders = model_folders(kind, args.out / kind, args.random_affine)
        reg = load_registry(package_registry(folders, args.out / kind / "model_registry.json"))
        predictor = Predictor(TASK, registry=reg)
        for name, (t2, t1) in data.items():
            try:
                loc_ref, seg_ref, t_ref = run_ivadomed(inference, folders, t2, t1, args.out / kind)
            except IndexError:
                print(f"| {kind} | {name} | ivadomed found no cord (IndexError) | | | | | | |")
                continue
            t0 = time.perf_counter()
            try:
                result, note = predictor(str(t2), str(t1)), ""
            except DeepsegError as exc:  # the package's own input checks, which the reference lacks
                if "look swapped" not in str(exc):
                    raise
                with no_contrast_check():
                    result, note = predictor(str(t2), str(t1)), " (contrast-order check off)"
            t_ours = time.perf_counter() - t0
            ours = [np.asanyarray(result.masks[c].dataobj) for c in predictor.classes]
            cells = [f"{dice(loc_ref, np.asanyarray(result.cord.dataobj)):.4f}"] + [f"{dice(r, o):.4f}" for r, o in zip(seg_ref, ours)]
            counts = f"{int((seg_ref[-1] > 0.5).sum())} / {int((ours[-1] > 0).sum())}"
            print(f"| {kind} | {name}{note} | {' | '.join(cells)} | {counts} | {t_ref:.1f} / {t_ours:.1f} |", flush=True)


if __name__ == "__main__":
    main()
