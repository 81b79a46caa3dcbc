"""ONNX Runtime sessions: one per model, built once, checked against the registry entry.

A model is called on a batch (B, C, *patch) float32 and returns (B, K, *patch) float32
sigmoid probabilities (channel-first, working-grid axes S-I, A-P, R-L).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeepsegError
from .registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    """ONNX Runtime settings shared by every session of a run."""

    threads: int = 0  # intra-op threads; 0 = ONNX Runtime's default (physical cores)
    batch_size: int = 1  # patches per session.run call: 2 is no faster per patch and touches twice the memory (page faults cost a fresh process ~0.3 s)
    memory_arena: bool = False  # the CPU arena trades memory for little speed on these graphs
    spinning: bool = False  # busy-waiting threads burn laptop battery for no gain here


class OnnxModel:
    """An ONNX Runtime session built once per model and reused for every patch and case."""

    def __init__(self, path: Path, spec: ModelSpec, options: RuntimeOptions = RuntimeOptions()):
        import onnxruntime as ort  # deferred: keeps `import deepseg_imsct` and `-h` fast

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(0, int(options.threads))
        so.inter_op_num_threads = 1
        so.enable_cpu_mem_arena = options.memory_arena
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DeepsegError(f"model file {path} cannot be loaded by ONNX Runtime ({exc}): reinstall it with -install") from None
        self.spec = spec
        self.path = Path(path)
        self.batch_size = max(1, int(options.batch_size))
        self._check_graph(path)

    def _check_graph(self, path: Path) -> None:
        """The graph's input and output must agree with the registry entry."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        spec = self.spec
        problem = None
        if len(inputs) != 1 or inputs[0].name != spec.input_name:
            problem = f"input named {[i.name for i in inputs]}, registry says '{spec.input_name}'"
        else:
            shape_in, shape_out = inputs[0].shape, outputs[0].shape
            expect_in = [None, len(spec.contrasts), *spec.patch_size]
            expect_out = [None, len(spec.classes), *spec.patch_size]
            for got, want, what in ((shape_in, expect_in, "input"), (shape_out, expect_out, "output")):
                if len(got) != 5 or any(isinstance(g, int) and w is not None and g != w for g, w in zip(got, want)):
                    problem = f"{what} shape {got}, registry expects {['N' if w is None else w for w in want]}"
                    break
        if problem:
            raise DeepsegError(f"model file {path} does not match its registry entry {spec.key}: {problem}; reinstall deepseg-imsct")
        spec.check_facts(self.session.get_modelmeta().custom_metadata_map, path)
        fixed_batch = inputs[0].shape[0]
        if isinstance(fixed_batch, int):
            self.batch_size = fixed_batch

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.spec.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        want = (batch.shape[0], len(self.spec.classes), *batch.shape[2:])
        if out.shape != want:
            raise DeepsegError(f"model file {self.path} returned shape {list(out.shape)} for input {list(batch.shape)}, "
                               f"registry entry {self.spec.key} expects {list(want)}: reinstall it with -install")
        return np.asarray(out, dtype=np.float32)
