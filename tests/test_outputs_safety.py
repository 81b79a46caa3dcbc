"""Issue 15, output side: no user file is silently replaced, an output set changes as a whole (under
failures, real signals and concurrent real processes), and output problems are found before the work.

Real files and real ``imsct_deepseg`` processes (analytic models through $DEEPSEG_IMSCT_REGISTRY);
no timing assertion: waits are for events (a marker file, a process's exit), with generous limits.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepseg_imsct import cli, outputs, pipeline, transaction
from deepseg_imsct.errors import DeepsegError

from test_pipeline import write_case

WAIT_S = 240.0  # for a child process to reach a point: generous on a loaded machine


@pytest.fixture
def case(registry, tmp_path) -> tuple[Path, Path, Path]:
    t2, t1 = write_case(tmp_path / "in")
    return t2, t1, tmp_path / "out"


@pytest.fixture
def no_inference(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("inference ran before the refusal")
    monkeypatch.setattr(pipeline, "segment", refuse)


def run(*argv, code: int = 0, capsys=None) -> str:
    assert cli.main([str(a) for a in argv]) == code
    return capsys.readouterr().err if capsys else ""


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_complete_set(folder: Path, threshold: float | None = None) -> None:
    """Four masks and four sidecars of one run: same command line, each image the one its sidecar records."""
    sidecars = sorted(folder.glob("*_seg-*.json"))
    assert len(sidecars) == 4 and len(list(folder.glob("*_seg-*.nii.gz"))) == 4
    runs = set()
    for side in sidecars:
        data = json.loads(side.read_text())
        image = side.with_name(side.name[: -len(".json")] + ".nii.gz")
        assert hashlib.sha256(image.read_bytes()).hexdigest() == data["OutputSha256"]
        runs.add(data["GeneratedBy"][0]["CommandLine"])
        if threshold is not None:
            assert data["Postprocessing"]["classes"]["tumor"]["threshold"] == threshold
    assert len(runs) == 1, runs
    leftovers = [p.name for p in folder.iterdir() if outputs.TEMP_NAME.match(p.name) or p.name == outputs.JOURNAL_NAME]
    assert leftovers == []


def command(*argv) -> list[str]:
    return [sys.executable, "-m", "deepseg_imsct.cli", *map(str, argv)]


# ----------------------------------------------------------------------------- never replace a user's file

def test_an_input_named_like_an_output_is_refused_even_with_overwrite(case, capsys, no_inference):
    t2, t1, _ = case
    t1 = t1.rename(t1.with_name("sub-01_T2w_seg-tumor.nii.gz"))
    before = t1.read_bytes()
    for extra in ([], ["-overwrite"]):
        err = run("-i", t2, t1, *extra, code=2, capsys=capsys)
        assert err.strip() == f"imsct_deepseg: error: output {t1} would replace the T1w input {t1}: rename that input or choose another folder with -o"
    assert t1.read_bytes() == before


def test_a_file_not_written_by_the_tool_is_refused_unless_overwrite(case, capsys, monkeypatch):
    t2, t1, out = case
    out.mkdir()
    manual = out / "sub-01_T2w_seg-tumor.nii.gz"
    manual.write_bytes(b"a manual mask")
    with monkeypatch.context() as m:
        m.setattr(pipeline, "segment", lambda *a, **k: pytest.fail("inference ran before the refusal"))
        err = run("-i", t2, t1, "-o", out, code=2, capsys=capsys)
    assert "was not written by imsct_deepseg (or was changed since)" in err and "-overwrite" in err
    assert manual.read_bytes() == b"a manual mask" and snapshot(out) == {manual.name: hashlib.sha256(b"a manual mask").hexdigest()}
    run("-i", t2, t1, "-o", out, "-overwrite")
    assert_complete_set(out)
    run("-i", t2, t1, "-o", out, "-thr", "0.6")  # our own outputs, from the same T2w: replaced
    assert_complete_set(out, 0.6)


def test_an_output_changed_by_hand_is_refused(case, capsys):
    t2, t1, out = case
    run("-i", t2, t1, "-o", out)
    (out / "sub-01_T2w_seg-edema.nii.gz").write_bytes(b"corrected by hand")
    err = run("-i", t2, t1, "-o", out, code=2, capsys=capsys)
    assert f"{out / 'sub-01_T2w_seg-edema.nii.gz'} was not written by imsct_deepseg" in err
    assert (out / "sub-01_T2w_seg-edema.nii.gz").read_bytes() == b"corrected by hand"


def test_two_subjects_with_the_same_file_name_do_not_collide(case, tmp_path, capsys):
    t2, t1, out = case
    other_t2, other_t1 = write_case(tmp_path / "other", seed=3)
    run("-i", other_t2, other_t1, "-o", out)
    before = snapshot(out)
    err = run("-i", t2, t1, "-o", out, code=2, capsys=capsys)
    assert f"holds the outputs of another T2w ({other_t2})" in err
    assert snapshot(out) == before
    run("-i", t2, t1, "-o", out, "-overwrite")
    assert_complete_set(out)
    assert json.loads((out / "sub-01_T2w_seg-tumor.json").read_text())["Sources"]["T2w"] == str(t2)


def test_the_python_api_has_the_option(case):
    t2, t1, out = case
    out.mkdir()
    (out / "sub-01_T2w_seg-cavity.json").write_text("{}")
    with pytest.raises(DeepsegError, match="was not written by imsct_deepseg"):
        pipeline.segment_files(t2, t1, out)
    assert set(pipeline.segment_files(t2, t1, out, overwrite=True)) == {*(f"seg-{c}" for c in ("tumor", "edema", "cavity", "whole-tumor")), "stats"}
    assert_complete_set(out)


# ----------------------------------------------------------------------------- checks before the work

def test_output_problems_are_found_before_any_work(case, tmp_path, capsys, no_inference):
    t2, t1, out = case
    (tmp_path / "a_file").write_text("x")
    err = run("-i", t2, t1, "-o", tmp_path / "a_file", code=2, capsys=capsys)
    assert "cannot create output folder" in err and "a file is in the way" in err and "choose another with -o" in err
    long_t2 = t2.with_name("y" * 236 + ".nii.gz")
    long_t2.write_bytes(t2.read_bytes())
    err = run("-i", long_t2, t1, "-o", out, code=2, capsys=capsys)
    assert "is too long for" in err and "give the T2w file a shorter name" in err
    (out / "sub-01_T2w_seg-whole-tumor.json").mkdir(parents=True)
    err = run("-i", t2, t1, "-o", out, code=2, capsys=capsys)
    assert err.strip().endswith("a folder is in the way of output " + str(out / "sub-01_T2w_seg-whole-tumor.json")
                                + ": move it away or choose another folder with -o")


# ----------------------------------------------------------------------------- the set changes as a whole

def test_a_failure_between_renames_puts_the_previous_set_back(case, capsys, monkeypatch):
    t2, t1, out = case
    run("-i", t2, t1, "-o", out)
    before = snapshot(out)
    real, calls = os.replace, []

    def failing(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == 5:  # the journal, then three outputs in place
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(transaction.os, "replace", failing)
    capsys.readouterr()
    err = run("-i", t2, t1, "-o", out, "-thr", "0.9", "-v", "0", code=2, capsys=capsys)
    assert "the previous outputs were put back" in err and len(err.strip().splitlines()) == 1
    assert snapshot(out) == before
    assert_complete_set(out)


def test_a_run_killed_between_renames_is_rolled_back_by_the_next_one(case):
    t2, t1, out = case
    assert subprocess.run(command("-i", t2, t1, "-o", out, "-v", "0"), timeout=WAIT_S).returncode == 0
    before = snapshot(out)
    child = slowed_child(out, "-i", t2, t1, "-o", out, "-thr", "0.9")
    wait_for(out / "halfway", child)
    child.send_signal(signal.SIGKILL)
    child.wait(WAIT_S)
    assert (out / outputs.JOURNAL_NAME).exists()  # two outputs replaced, no handler ran
    with transaction.locked(out):  # what the next run does first
        pass
    (out / "halfway").unlink()
    assert snapshot(out) == before
    assert_complete_set(out)


def test_a_first_run_killed_halfway_does_not_block_the_next_run(case):
    """A fresh folder: the killed run's outputs in place have no sidecars yet; the next run rolls
    them back before judging whose files are there, then writes its own set."""
    t2, t1, out = case
    out.mkdir()
    child = slowed_child(out, "-i", t2, t1, "-o", out)
    wait_for(out / "halfway", child)
    child.send_signal(signal.SIGKILL)
    child.wait(WAIT_S)
    (out / "halfway").unlink()
    assert (out / outputs.JOURNAL_NAME).exists()
    assert subprocess.run(command("-i", t2, t1, "-o", out, "-v", "0"), timeout=WAIT_S).returncode == 0
    assert not (out / outputs.JOURNAL_NAME).exists()
    assert_complete_set(out)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_real_signal_during_the_write_is_handled_as_ctrl_c(case, signum):
    t2, t1, out = case
    assert subprocess.run(command("-i", t2, t1, "-o", out, "-v", "0"), timeout=WAIT_S).returncode == 0
    before = snapshot(out)
    child = slowed_child(out, "-i", t2, t1, "-o", out, "-thr", "0.9")
    wait_for(out / "halfway", child)
    child.send_signal(signum)
    _, err = child.communicate(timeout=WAIT_S)
    assert child.returncode == 128 + signum
    assert err.strip().splitlines() == ["imsct_deepseg: interrupted: no output was written or changed"]
    (out / "halfway").unlink()
    assert snapshot(out) == before
    assert_complete_set(out)


SLOWED = """
import sys, time
from pathlib import Path
from deepseg_imsct import cli, transaction
real, marker, count = transaction.os.replace, Path(sys.argv[1]), [0]
def slow(src, dst, *a, **k):
    real(src, dst, *a, **k)
    count[0] += 1
    if count[0] == 3:  # the journal and two outputs in place
        marker.write_text("halfway")
        time.sleep(600)
transaction.os.replace = slow
sys.exit(cli.main(sys.argv[2:]))
"""


def slowed_child(folder: Path, *argv) -> subprocess.Popen:
    """``imsct_deepseg ARGV`` that stops for good halfway through replacing the set (marker: ``folder/halfway``)."""
    return subprocess.Popen([sys.executable, "-c", SLOWED, str(folder / "halfway"), *map(str, argv), "-v", "0"],
                            stderr=subprocess.PIPE, text=True)


def wait_for(marker: Path, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not marker.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never reached the write"
        time.sleep(0.05)


def test_stale_temporary_files_of_killed_runs_are_swept_and_nothing_else(case):
    t2, t1, out = case
    out.mkdir()
    ours = [out / ".sub-01_T2w_seg-tumor.nii.gz.abcd1234.part", out / ".sub-01_T2w_seg-tumor.json.x_9z0q1w.part"]
    theirs = [out / "notes.part", out / ".other.txt.abcd1234.part", out / ".hidden.nii.gz"]
    for path in ours + theirs:
        path.write_bytes(b"left behind")
        os.utime(path, (time.time() - 3600,) * 2)
    run("-i", t2, t1, "-o", out)
    assert not any(p.exists() for p in ours) and all(p.read_bytes() == b"left behind" for p in theirs)
    assert_complete_set(out)


def test_concurrent_runs_into_one_folder_take_turns(case, tmp_path):
    """Same subject, two settings, racing real processes: each round ends with one complete set."""
    t2, t1, out = case
    for _ in range(3):
        procs = [subprocess.Popen(command("-i", t2, t1, "-o", out, "-thr", thr, "-v", "0")) for thr in ("0.3", "0.8")]
        assert [p.wait(WAIT_S) for p in procs] == [0, 0]
        assert_complete_set(out)


def test_two_subjects_racing_into_one_folder_one_wins_one_is_refused(case, tmp_path):
    t2, t1, out = case
    other_t2, other_t1 = write_case(tmp_path / "other", seed=3)
    procs = [subprocess.Popen(command("-i", a, b, "-o", out, "-v", "0"), stderr=subprocess.PIPE, text=True)
             for a, b in ((t2, t1), (other_t2, other_t1))]
    results = [(p.wait(WAIT_S), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    assert "holds the outputs of another T2w" in next(err for code, err in results if code == 2)
    assert_complete_set(out)


# ----------------------------------------------------------------------------- streams

@pytest.mark.parametrize("stderr", ["closed", "/dev/full"])
def test_a_closed_or_full_stderr_gives_the_exit_status_and_no_traceback(case, tmp_path, stderr):
    t2, t1, out = case
    if stderr == "/dev/full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    redirect = "2>&-" if stderr == "closed" else "2>/dev/full"
    shell = f'exec "$@" {redirect}'
    good = subprocess.run(["sh", "-c", shell, "sh", *command("-i", t2, t1, "-o", out)], stdout=subprocess.PIPE, timeout=WAIT_S)
    (tmp_path / "a_file").write_text("x")
    bad = subprocess.run(["sh", "-c", shell, "sh", *command("-i", t2, t1, "-o", tmp_path / "a_file")], stdout=subprocess.PIPE,
                         timeout=WAIT_S)
    assert (good.returncode, bad.returncode) == (0, 2)
    assert b"Traceback" not in good.stdout + bad.stdout
    assert_complete_set(out)


def test_a_full_stdout_is_no_traceback_and_a_lost_task_list_is_an_error(registry):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        done = subprocess.run(command("-list-tasks"), stdout=full, stderr=subprocess.PIPE, text=True, timeout=WAIT_S)
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.returncode == 2 and done.stderr.strip() == (
        "imsct_deepseg: error: could not write the task list to standard output (closed, or the disk is full)")
