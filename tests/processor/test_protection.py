"""Nothing lost, nothing silently wrong: output folders, resumes, checkpoints and faults, each through the real
command line. Checks that run before torch is imported are tested with real subprocesses (~0.1 s each); the
others in-process through ``run_cli`` and the scripts' own ``main``; signals and a live lock with one real
training process. Every refusal is one line on stderr, exit code 2, no traceback; where data could be lost,
every file of the folder is byte-identical afterwards."""

import errno
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from model import read_checkpoint
from processor import preflight
from processor.cli import run_cli
from tests.conftest import REPO, kept_logging, tiny_config
from utils import files

pytestmark = pytest.mark.usefixtures("one_thread")

ADVICE = ("weights_only", "weights only", "trust")  # torch's advice to turn the safety off, never passed on


def _main(script: str):
    """``main`` of ``train.py`` / ``test.py``, the function the script runs."""
    spec = importlib.util.spec_from_file_location(f"_{script}_entry", os.path.join(REPO, f"{script}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


TRAIN, TEST = _main("train"), _main("test")


def _refused(capsys, main, argv: list[str]) -> str:
    """Run the entry point; it must exit 2 with one line on stderr and no traceback. Returns the line."""
    with kept_logging(), pytest.raises(SystemExit) as stop:
        run_cli(main, "test", argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _snapshot(folder: str) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def finished(trained_run, tmp_path) -> str:
    """A copy of the session's finished training run (2 epochs), to point new commands at."""
    return shutil.copytree(trained_run, str(tmp_path / "finished"))


def _resume_argv(folder: str, *opts: str) -> list[str]:
    return ["--config_file", os.path.join(folder, "config.yaml"), "OUTPUT_DIR", folder, "SOLVER.RESUME", "True",
            *opts]


def _scripts(cases, timeout: float = 120) -> None:
    """Run the real scripts at once; each must exit 2 with one line holding its expected text."""
    procs = [subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for argv, _ in cases]
    for proc, (argv, expected) in zip(procs, cases):
        out, err = proc.communicate(timeout=timeout)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert all(text in lines[0] for text in expected), (argv, lines[0])
        assert "epoch 1" not in out


def test_output_folders_are_refused_before_torch_is_imported(finished, tmp_path):
    before = _snapshot(finished)
    resumable = shutil.copytree(finished, str(tmp_path / "resumable"))
    for name in ("model_final.pth", "test_results.json"):
        os.remove(os.path.join(resumable, name))
    no_last = shutil.copytree(finished, str(tmp_path / "no_last"))
    os.remove(os.path.join(no_last, "last.pth"))
    evaluated = tmp_path / "evaluated"   # where test.py wrote its results
    evaluated.mkdir()
    (evaluated / "test_results.json").write_text("{}")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    read_only = "/sys/fs" if os.geteuid() == 0 else str(tmp_path / "read_only")  # root ignores permissions
    if os.geteuid():
        os.mkdir(read_only, 0o500)
    config = os.path.join(finished, "config.yaml")
    cases = [
        (["train.py", "--config_file", config, "OUTPUT_DIR", finished],
         [f"OUTPUT_DIR {finished} already holds a finished run (last.pth, model_epoch001.pth", "another OUTPUT_DIR"]),
        (["train.py", "--config_file", config, "OUTPUT_DIR", resumable],
         [f"OUTPUT_DIR {resumable} already holds a run that can be resumed", "SOLVER.RESUME True"]),
        (["train.py", "--config_file", config, "OUTPUT_DIR", no_last, "SOLVER.RESUME", "True"],
         [f"OUTPUT_DIR {no_last} has no last.pth to resume from", "model_epoch001.pth"]),
        (["train.py", "--config_file", config, "OUTPUT_DIR", str(evaluated)],
         [f"OUTPUT_DIR {evaluated} already holds the files of an earlier run (test_results.json)"]),
        (["train.py", "--config_file", config, "OUTPUT_DIR", str(a_file)], [f"OUTPUT_DIR {a_file} is a file"]),
        (["train.py", "--config_file", config, "OUTPUT_DIR", str(a_file / "out")],
         [f"OUTPUT_DIR {a_file}/out cannot be created: {a_file} is a file"]),
        (["test.py", "--config_file", config, "OUTPUT_DIR", read_only, "TEST.WEIGHT", config],
         [f"OUTPUT_DIR {read_only} is not writable"]),
    ]
    _scripts(cases)
    assert _snapshot(finished) == before                       # byte-identical, nothing added
    assert os.listdir(evaluated) == ["test_results.json"]


def test_resume_refuses_settings_it_cannot_honour(finished, tmp_path, capsys):
    """Refused before anything is written: train.log, config.yaml and every checkpoint byte-identical, also
    for a fault met later in start-up (the data root), after the run has begun logging."""
    before = _snapshot(finished)
    last = os.path.join(finished, "last.pth")
    a_file = tmp_path / "data_root"
    a_file.write_text("")
    cases = {("DATASETS.ROOT_DIR", str(a_file)): f"DATASETS.ROOT_DIR {a_file} is a file",
             ("SOLVER.BASE_LR", "0.002"): f"SOLVER.BASE_LR 0.002 differs from {last}'s 0.001",
             ("SOLVER.OPTIMIZER_NAME", "SGD"): f"SOLVER.OPTIMIZER_NAME 'SGD' differs from {last}'s 'Adam'",
             ("MODEL.HEAT.NUM_CYCLES", "2"): f"MODEL.HEAT.NUM_CYCLES 2 differs from {last}'s 3",
             ("SOLVER.MAX_EPOCHS", "1"): f"SOLVER.MAX_EPOCHS 1 is below the 2 epochs {last} has trained",
             ("SOLVER.MAX_EPOCHS", "4"): f"SOLVER.MAX_EPOCHS 4 differs from {last}'s 2: the cosine schedule"}
    for (key, value), expected in cases.items():
        line = _refused(capsys, TRAIN, _resume_argv(finished, key, value))
        assert expected in line, line
    assert _snapshot(finished) == before


def test_resume_applies_the_settings_it_may_change(finished):
    """Logging, evaluation and loader settings may change: the resumed run uses and records them. (The run
    is finished: the resume saves model_final.pth again and evaluates it.)"""
    with kept_logging():
        run_cli(TRAIN, "test", _resume_argv(finished, "SOLVER.LOG_PERIOD", "7", "SOLVER.EVAL_PERIOD", "0",
                                            "TEST.MODAL_BIAS", "False", "TEST.IMS_PER_BATCH", "5"))
    with open(os.path.join(finished, "config.yaml")) as f:
        recorded = f.read()
    assert "LOG_PERIOD: 7" in recorded and "IMS_PER_BATCH: 5" in recorded
    assert read_checkpoint(os.path.join(finished, "model_final.pth")).epoch == 2
    with open(os.path.join(finished, "train.log")) as f:
        assert "resumed from" in f.read()


def test_test_py_says_where_the_network_differs_from_the_checkpoint(trained_run, tiny_root, tmp_path):
    out = tmp_path / "eval"
    weight = os.path.join(trained_run, "model_final.pth")
    with kept_logging():
        run_cli(TEST, "test", ["--config_file", os.path.join(trained_run, "config.yaml"), "OUTPUT_DIR", str(out),
                               "TEST.WEIGHT", weight, "MODEL.HEAT.NUM_CYCLES", "2"])
    record = json.loads((out / "test_results.json").read_text())
    assert record["differs_from_checkpoint"] == {"MODEL.HEAT.NUM_CYCLES": {"used": 2, "checkpoint": 3}}
    log = (out / "test.log").read_text()
    assert f"MODEL.HEAT.NUM_CYCLES is 2 here but 3 in the config {weight} was trained with" in log


class _Hostile:
    """A pickle that runs a shell command when unpickled (creates the file ``self.marker``)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_and_damaged_checkpoints_are_refused_by_name(trained_run, tiny_root, tmp_path, capsys):
    marker = str(tmp_path / "PWNED")
    hostile = {"zip": str(tmp_path / "zip.pth"), "legacy": str(tmp_path / "legacy.pth")}
    torch.save({"format": "mhcf", "model": _Hostile(marker)}, hostile["zip"])
    torch.save({"model": _Hostile(marker)}, hostile["legacy"], _use_new_zipfile_serialization=False)
    good = read_checkpoint(os.path.join(trained_run, "model_final.pth"))
    raw = torch.load(good.path, weights_only=True)
    damaged = {
        "nan": ({**raw, "model": {**raw["model"], "heat.alpha": torch.tensor(float("nan"))}},
                "NaN or infinite values in heat.alpha"),
        "entry": ({**raw, "model": {**raw["model"], "extra": "text"}}, "weight entry 'extra' is a str, not a tensor"),
        "no_model": ({k: v for k, v in raw.items() if k != "model"}, "an MHCF checkpoint without its model weights"),
        "epoch": ({**raw, "epoch": "two"}, "its 'epoch' entry is a str, not a int"),
    }
    base = ["--config_file", os.path.join(trained_run, "config.yaml"), "OUTPUT_DIR", str(tmp_path / "out")]
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    assert f"checkpoint {folder} is not a regular file" in _refused(capsys, TEST, [*base, "TEST.WEIGHT", str(folder)])
    for path in hostile.values():
        line = _refused(capsys, TEST, [*base, "TEST.WEIGHT", path])
        assert f"{path} is not a readable PyTorch checkpoint" in line and "posix.system" in line, line
        assert not any(advice in line.lower() for advice in ADVICE), line
    for name, (record, expected) in damaged.items():
        path = str(tmp_path / f"{name}.pth")
        torch.save(record, path)
        line = _refused(capsys, TEST, [*base, "TEST.WEIGHT", path])
        assert f"error: {path}: {expected}" in line, line
    # the CLIP reader (MODEL.PRETRAIN_PATH) refuses it alike, also when resuming is not involved
    line = _refused(capsys, TRAIN, [*base[:2], "OUTPUT_DIR", str(tmp_path / "train"), "MODEL.PRETRAIN_PATH",
                                    hostile["zip"], "DATASETS.ROOT_DIR", tiny_root])
    assert f"{hostile['zip']} is not a readable CLIP checkpoint" in line and "posix.system" in line, line
    assert not any(advice in line.lower() for advice in ADVICE), line
    assert not os.path.exists(marker)                                    # nothing ran


def _fast_run(tiny_root: str, out: str, *opts: str) -> list[str]:
    """argv of a tiny training run (small input, 2 iterations per epoch)."""
    cfg = tiny_config(tiny_root, out, "INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]",
                      "INPUT.PADDING", "2", "DATALOADER.CACHE", "False", *opts)
    config = os.path.join(os.path.dirname(out), "config.yml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    return ["--config_file", config]


def test_a_full_disk_while_saving_is_one_line(tiny_root, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")

    def full_disk(obj, f):
        f.write(b"PK\x03\x04 the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.torch, "save", full_disk)
    line = _refused(capsys, TRAIN, _fast_run(tiny_root, out, "SOLVER.MAX_EPOCHS", "1"))
    assert line == f"error: no space left writing {out}/last.pth"
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")] and "last.pth" not in os.listdir(out)

    # anywhere else, e.g. while the Synthetic set is generated into an empty data root
    def full_disk_image(image, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))

    monkeypatch.setattr(Image.Image, "save", full_disk_image)
    line = _refused(capsys, TRAIN, ["--config_file", _fast_run(tiny_root, out)[1], "OUTPUT_DIR", str(tmp_path / "b"),
                                    "DATASETS.ROOT_DIR", str(tmp_path / "empty_root")])
    assert line.startswith(f"error: {os.strerror(errno.ENOSPC)} writing {tmp_path}/empty_root/.synthetic-"), line


def test_a_killed_dataloader_worker_is_one_line(tiny_root, tmp_path, capsys, monkeypatch):
    """A worker process killed from outside (as the out-of-memory killer does) while reading an image."""
    import datasets.bases

    real = datasets.bases.read_image

    def killed_in_worker(path):
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path)

    monkeypatch.setattr(datasets.bases, "read_image", killed_in_worker)
    out = str(tmp_path / "run")
    line = _refused(capsys, TRAIN, _fast_run(tiny_root, out, "DATALOADER.NUM_WORKERS", "1"))
    assert line.startswith("error: DataLoader worker (pid ") and "DATALOADER.NUM_WORKERS" in line, line
    assert "killed by signal: Killed" in line or "exited unexpectedly" in line, line


def _wait_for(proc: subprocess.Popen, log: str, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (os.path.exists(log) and text in _read(log)):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.01)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_a_live_run_holds_its_folder_and_sigterm_leaves_a_sane_checkpoint(tiny_root, tmp_path):
    """The real script, as users and job schedulers meet it. While it trains, a second train.py and a test.py
    into its folder are refused (naming the live run) and touch nothing, not even a temporary file of its.
    SIGTERM in epoch 2 then logs one line, exits 143 and leaves last.pth of epoch 1, no temporary and no
    lock."""
    out = str(tmp_path / "run")
    argv = _fast_run(tiny_root, out, "SOLVER.MAX_EPOCHS", "20")
    proc = subprocess.Popen([sys.executable, "train.py", *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = os.path.join(out, "train.log")
    try:
        _wait_for(proc, log, "epoch 1 iter 1/")
        temporary = os.path.join(out, ".model_epoch001.pth.x1y2z3.tmp")  # as a save in progress leaves it
        with open(temporary, "wb") as f:
            f.write(b"PK half written")
        holder = f"train.py, pid {proc.pid} on "
        _scripts([(["train.py", *argv], [f"OUTPUT_DIR {out} is in use by a live run", holder]),
                  (["test.py", *argv, "TEST.WEIGHT", argv[1]], [holder])])
        assert os.path.exists(temporary)
        os.remove(temporary)
        _wait_for(proc, log, "epoch 2 iter 1/")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip() == "terminated (SIGTERM)", err
    with open(log) as f:
        stopped = [line for line in f if "stopped by" in line]
    assert len(stopped) == 1 and f"stopped by SIGTERM in epoch 2; {out}/last.pth holds epoch 1; continue with " \
                                  f"SOLVER.RESUME True" in stopped[0]
    assert read_checkpoint(os.path.join(out, "last.pth")).epoch == 1
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") or n == preflight.LOCK_NAME]


def test_dataset_faults_are_named_before_training(trained_run, tiny_root, tmp_path, capsys):
    """Through the real entry points, on copies of the tiny Synthetic tree: each fault is one line naming the
    file or folder, raised before any epoch (no last.pth), and a special file named like an image does not
    hang the run."""
    from tests.datasets.test_images import _png_header

    def tree(name: str) -> str:
        root = tmp_path / name
        shutil.copytree(os.path.join(tiny_root, "Synthetic"), root / "Synthetic")
        return str(root)

    def image(root: str, modality: str) -> str:
        folder = os.path.join(root, "Synthetic", "test", modality)
        return os.path.join(folder, sorted(os.listdir(folder))[0])

    fifo_root, bomb_root, lone_root, old_root = tree("fifo"), tree("bomb"), tree("lone"), tree("old")
    fifo = image(fifo_root, "NI")
    os.remove(fifo)
    os.mkfifo(fifo)
    with open(image(bomb_root, "TI"), "wb") as f:
        f.write(_png_header(20_000, 20_000))
    for modality in ("RGB", "NI", "TI"):  # every test identity seen by camera 1 only
        folder = os.path.join(lone_root, "Synthetic", "test", modality)
        for name in os.listdir(folder):
            if "_cam1_" not in name:
                os.remove(os.path.join(folder, name))
    with open(os.path.join(old_root, "Synthetic", "VERSION"), "w") as f:
        f.write("0")
    with open(os.path.join(old_root, "Synthetic", "my_notes.txt"), "w") as f:
        f.write("a file of the user's")
    old_before = _snapshot(old_root)
    a_file = tmp_path / "root_file"
    a_file.write_text("")
    config = os.path.join(trained_run, "config.yaml")
    weight = os.path.join(trained_run, "model_final.pth")
    out = str(tmp_path / "out")
    test_cases = {
        fifo_root: f"cannot read image {fifo}: it is a FIFO, not an image file",
        bomb_root: f"cannot read image {image(bomb_root, 'TI')}: more than",
        lone_root: "Synthetic: no query has a positive in the gallery under the camera protocol",
        str(a_file): f"DATASETS.ROOT_DIR {a_file} is a file",
    }
    signal.alarm(60)  # a hang fails the test instead of the suite
    try:
        for root, expected in test_cases.items():
            line = _refused(capsys, TEST, ["--config_file", config, "OUTPUT_DIR", out, "TEST.WEIGHT", weight,
                                           "DATASETS.ROOT_DIR", root])
            assert expected in line, line
    finally:
        signal.alarm(0)
    train_cases = {
        (old_root,): f"{old_root}/Synthetic holds the Synthetic dataset of generator version 0, this code makes "
                     f"version 1; move or delete that folder yourself (nothing in it was changed)",
        (tiny_root, "MODEL.MODALITIES", "['RGB', 'NI', 'XX']", "MODEL.HEAT.ORDER", "['RGB', 'NI', 'XX']"):
            "Synthetic has the modalities RGB, NI, TI; MODEL.MODALITIES ['RGB', 'NI', 'XX'] names XX",
    }
    for i, ((root, *opts), expected) in enumerate(train_cases.items()):
        run = str(tmp_path / f"train{i}")
        line = _refused(capsys, TRAIN, ["--config_file", config, "OUTPUT_DIR", run, "DATASETS.ROOT_DIR", root,
                                        *opts])
        assert expected in line, line
        assert os.listdir(run) == ["train.log"]             # no epoch, no checkpoint, no config.yaml
        log = _read(os.path.join(run, "train.log"))
        assert "epoch 1" not in log and f"error: {expected}" in log
    assert _snapshot(old_root) == old_before
