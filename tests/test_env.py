"""helpers.env: the smoke/full switch, seeds, devices, offline defaults, atomic writes."""

import os
import subprocess
import sys

import torch

from helpers import env


def _run(code: str, **extra_env) -> str:
    unset = ("COURSE_SMOKE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "COURSE_ALLOW_HUB")
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    environ.update(extra_env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True).stdout


def test_smoke_switch_and_pick():
    code = "from helpers import env; print(env.SMOKE, env.MODE, env.pick(smoke=1, full=2))"
    assert _run(code, COURSE_SMOKE="1").split() == ["True", "smoke", "1"]
    assert _run(code).split() == ["False", "full", "2"]


def test_offline_by_default_and_opt_in():
    code = "import os, helpers; print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('HF_DATASETS_OFFLINE'))"
    assert _run(code).split() == ["1", "1"]
    assert _run(code, COURSE_ALLOW_HUB="1").split() == ["None", "None"]


def test_set_seed_reproduces_all_generators():
    import random

    import numpy as np

    env.set_seed(123)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    env.set_seed(123)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_device_is_said_in_one_line(capsys):
    device = env.get_device()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"device: {device.type}")
    assert env.autocast_dtype("cpu") is None


def test_artifacts_are_kept_apart_by_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    path = env.artifact_dir("pretrained")
    assert path == tmp_path / "artifacts" / env.MODE / "pretrained" and path.is_dir()


def test_atomic_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    env.atomic_write_bytes(target, b"first")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    try:
        env.atomic_write_bytes(target, b"second")
    except OSError:
        pass
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_device_can_be_forced(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert env.get_device().type == "cpu"
    assert "set by COURSE_DEVICE" in capsys.readouterr().out


def test_eval_mode_restores_each_module_even_after_an_error():
    a, b = torch.nn.Dropout(0.5).train(), torch.nn.Dropout(0.5).eval()
    try:
        with env.eval_mode(a, b):
            assert not a.training and not b.training
            raise KeyError("inside")
    except KeyError:
        pass
    assert a.training and not b.training
