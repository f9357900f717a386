"""helpers.checkpoint: checkpoints round-trip, switch versions atomically (an interrupt, a killed writer or
concurrent writers never leave a broken or mixed one), clean up after dead writers, and refuse corrupt or
non-finite weights clearly."""

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_train import TinyLM, make_trainer, params
from torch import nn

from helpers import checkpoint
from helpers.checkpoint import CheckpointError, NoCheckpointError, current_version, load_model_state, read_config, save_model
from helpers.env import set_seed

needs_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs os.fork")


pytestmark = pytest.mark.usefixtures("one_thread")


def filled(value: float) -> TinyLM:
    """A TinyLM whose every weight is ``value``, with the config ``{"fill": value}``."""
    model = TinyLM()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    model.config = {"fill": value}
    return model


def fill_of(path) -> float:
    """The fill of the checkpoint ``path``, checking that its config and its weights come from the same save."""
    model = TinyLM()
    config = load_model_state(model, path)
    assert all(bool((p == config["fill"]).all()) for p in model.parameters()), f"weights of another save than {config}"
    return config["fill"]


def entries(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# ---- what a checkpoint holds -----------------------------------------------------------------------------------


def test_save_model_stores_tied_weights_once_and_reties_them(tmp_path):
    set_seed(0)
    model = TinyLM()
    path = save_model(model, tmp_path / "m")
    first = current_version(path)
    save_model(model, path)  # saving over a checkpoint works and leaves one version
    version = current_version(path)
    assert version != first and entries(path) == ["checkpoint.json", version.name] and entries(tmp_path) == ["m"]
    assert entries(version) == ["config.json", "model.safetensors"]
    pointer = json.loads((path / "checkpoint.json").read_text())
    assert pointer["sha256"] == {name: hashlib.sha256((version / name).read_bytes()).hexdigest() for name in entries(version)}
    with safe_open(str(version / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "wte.weight" in f.keys()
    assert json.loads((version / "config.json").read_text())["aliases"] == {"lm_head.weight": "wte.weight"}
    assert read_config(path) == model.config

    set_seed(1)
    other = TinyLM()
    assert load_model_state(other, path) == model.config
    for (name, p), q in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), name
    assert other.lm_head.weight.data_ptr() == other.wte.weight.data_ptr()


def test_trainer_checkpoint_holds_optimizer_and_rng_state_as_tensors(tmp_path):
    trainer = make_trainer(max_steps=3, checkpoint_dir=tmp_path)
    trainer.fit()
    version = current_version(tmp_path / "last")
    assert entries(version) == ["config.json", "model.safetensors", "trainer.json", "trainer.safetensors"]
    with safe_open(str(version / "trainer.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"optimizer.wte.weight.exp_avg", "optimizer.wte.weight.exp_avg_sq", "optimizer.wte.weight.step", "rng.torch"} <= keys
    assert not any(k.startswith("optimizer.lm_head.weight") for k in keys)  # tied: one state
    meta = json.loads((version / "trainer.json").read_text())
    assert meta["step"] == 3 and meta["train_config"]["max_steps"] == 3 and len(meta["history"]) == 3
    assert entries(tmp_path) == ["best", "last"]
    assert entries(tmp_path / "last") == ["checkpoint.json", version.name]  # no temporary folders left behind


# ---- damaged, corrupt, foreign and old checkpoints -----------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    trainer = make_trainer(max_steps=3, checkpoint_dir=tmp_path / "run")
    trainer.fit()
    return tmp_path / "run" / "last"


def broken_copy(saved, name, damage, rehash=True):
    """A copy of ``saved`` with its file ``name`` damaged; ``rehash``: with the file's SHA-256 in checkpoint.json
    updated, as if it had been written so (to reach the checks behind the checksum)."""
    folder = saved.parent / f"broken-{name}"
    shutil.copytree(saved, folder)
    file = current_version(folder) / name
    damage(file)
    if rehash and file.exists():
        pointer = json.loads((folder / "checkpoint.json").read_text())
        pointer["sha256"][name] = hashlib.sha256(file.read_bytes()).hexdigest()
        (folder / "checkpoint.json").write_text(json.dumps(pointer))
    return folder


def flip_last_byte(file):
    data = bytearray(file.read_bytes())
    data[-1] ^= 1  # in model.safetensors: the exponent of the last weight, which doubles or halves (still finite)
    file.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("model.safetensors", lambda f: f.unlink(), "incomplete: model.safetensors is missing"),
        ("model.safetensors", lambda f: f.write_bytes(f.read_bytes()[:-100]), "model.safetensors .* truncated or corrupt"),
        ("model.safetensors", lambda f: f.write_bytes(bytes(range(256)) * 4), "not a readable safetensors file"),
        ("config.json", lambda f: f.write_text('{"format": '), "config.json .* not valid JSON"),
        ("config.json", lambda f: f.write_text('{"model_type": "gpt2"}'), "not written by this course's helpers"),
        ("config.json", lambda f: f.unlink(), "config.json is missing"),
    ],
)
def test_damaged_checkpoints_fail_clearly(saved, name, damage, message):
    folder = broken_copy(saved, name, damage)
    model = TinyLM()
    before = params(model)
    with pytest.raises(CheckpointError, match=message):
        load_model_state(model, folder)
    with pytest.raises(CheckpointError, match=message):
        make_trainer().load(folder)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "trainer.safetensors", "trainer.json"])
def test_a_changed_byte_fails_the_sha256_check(saved, name):
    folder = broken_copy(saved, name, flip_last_byte, rehash=False)
    message = f"{name} in .*{current_version(folder).name} fails its SHA-256 check: the file is corrupt"
    trainer = make_trainer()
    before = params(trainer.model)
    with pytest.raises(CheckpointError, match=message):
        trainer.load(folder)
    if name in ("model.safetensors", "config.json"):
        with pytest.raises(CheckpointError, match=message):
            load_model_state(trainer.model, folder)
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_non_finite_weights_are_refused_naming_the_file_and_the_tensor(tmp_path):
    model = TinyLM()
    with torch.no_grad():
        model.mlp.weight[0, 0] = float("nan")
    save_model(model, tmp_path / "m")
    message = r"model.safetensors in .*m holds non-finite values \(NaN or inf\) in mlp.weight: the model had diverged"
    with pytest.raises(CheckpointError, match=message):
        load_model_state(TinyLM(), tmp_path / "m")
    trainer = make_trainer(checkpoint_dir=tmp_path / "run")
    with torch.no_grad():
        trainer.model.wte.weight.fill_(float("inf"))
    trainer.save(tmp_path / "run" / "last")
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN or inf\) in wte.weight"):
        make_trainer().load(tmp_path / "run" / "last")


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("trainer.safetensors", lambda f: f.write_bytes(f.read_bytes()[:50]), "trainer.safetensors .* truncated"),
        ("trainer.json", lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "rng": None})), "malformed RNG state"),
        (
            "trainer.json",
            lambda f: f.write_text(json.dumps({k: v for k, v in json.loads(f.read_text()).items() if k != "step"})),
            "trainer.json .* lacks \\['step'\\]",
        ),
        ("trainer.json", lambda f: f.unlink(), "incomplete: trainer.json is missing"),
    ],
)
def test_damaged_trainer_state_fails_before_changing_anything(saved, name, damage, message):
    folder = broken_copy(saved, name, damage)
    trainer = make_trainer()
    before = params(trainer.model)
    with pytest.raises(CheckpointError, match=message):
        trainer.load(folder)
    assert trainer.step == 0 and all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_foreign_or_misshapen_checkpoints_name_the_mismatch(saved, tmp_path):
    with pytest.raises(NoCheckpointError, match="No checkpoint at"):
        load_model_state(TinyLM(), tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoCheckpointError, match="No checkpoint at"):
        read_config(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"does not fit this model: wte.weight \(11, 8\) in the checkpoint vs \(12, 8\)"):
        load_model_state(TinyLM(vocab=12), saved)
    with pytest.raises(CheckpointError, match="missing extra.weight"):
        wider = TinyLM()
        wider.extra = nn.Linear(2, 2)
        load_model_state(wider, saved)
    frozen = make_trainer()
    frozen.model.mlp.requires_grad_(False)
    frozen.optimizer.param_groups[0]["names"].remove("mlp.weight")
    with pytest.raises(CheckpointError, match="unexpected mlp.weight"):
        frozen.load(saved)
    with pytest.raises(CheckpointError, match="has no trainer.safetensors or trainer.json. It holds weights only"):
        make_trainer().load(saved.parent / "best")


@pytest.mark.parametrize(
    ("pointer", "message"),
    [('{"format": ', "checkpoint.json in .* not valid JSON"), ("hijack", "does not name a version folder")],
)
def test_a_damaged_pointer_fails_clearly(saved, pointer, message):
    file = saved / "checkpoint.json"
    if pointer == "hijack":  # a pointer must not lead out of its folder
        pointer = json.dumps({**json.loads(file.read_text()), "folder": "../best"})
    file.write_text(pointer)
    with pytest.raises(CheckpointError, match=message):
        load_model_state(TinyLM(), saved)


def test_a_folder_in_the_first_layout_is_refused_then_saved_over(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    save_file({"wte.weight": torch.zeros(11, 8)}, str(old / "model.safetensors"))
    (old / "config.json").write_text(json.dumps({"format": checkpoint.FORMAT, "version": 1, "config": {}, "aliases": {}}))
    for read in (read_config, lambda path: load_model_state(TinyLM(), path)):
        with pytest.raises(CheckpointError, match="no checkpoint.json: it is a checkpoint in the first layout.*Save it again"):
            read(old)
    save_model(filled(1.0), old)
    assert fill_of(old) == 1.0 and entries(old) == ["checkpoint.json", current_version(old).name]


# ---- interrupted, killed and concurrent writers --------------------------------------------------------------------


def on_call(real, n, action, after=False):
    """``real``, with ``action()`` run before (or ``after``) its ``n``-th call."""
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n and not after:
            action()
        result = real(*args, **kwargs)
        if calls == n and after:
            action()
        return result

    return wrapper


def interrupt():
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("target", "call", "expected"),
    [("_write_file", 2, 1.0), ("replace", 1, 1.0), ("replace", 2, 1.0), ("_remove_leftovers", 1, 2.0)],
    ids=["writing-the-files", "renaming-the-version", "switching-the-pointer", "removing-the-old-version"],
)
def test_an_interrupted_save_leaves_a_whole_checkpoint(tmp_path, monkeypatch, target, call, expected):
    path = save_model(filled(1.0), tmp_path / "m")
    module = os if target == "replace" else checkpoint
    with monkeypatch.context() as patch:
        patch.setattr(module, target, on_call(getattr(module, target), call, interrupt))
        with pytest.raises(KeyboardInterrupt):
            save_model(filled(2.0), path)
    assert fill_of(path) == expected  # the previous save, or the new one once the pointer names it
    assert not [name for name in entries(path) if name.startswith(".tmp-")]
    save_model(filled(3.0), path)
    assert fill_of(path) == 3.0 and entries(path) == ["checkpoint.json", current_version(path).name]


def _save_and_get_killed(path, call):
    kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
    checkpoint._write_file = on_call(checkpoint._write_file, call, kill, after=True)
    save_model(filled(2.0), path)


@needs_fork
@pytest.mark.parametrize("call", [1, 3], ids=["after-the-first-file", "before-switching-the-pointer"])
def test_a_writer_killed_mid_save_leaves_the_previous_checkpoint_and_the_next_save_cleans_up(tmp_path, call):
    path = save_model(filled(1.0), tmp_path / "m")
    writer = multiprocessing.get_context("fork").Process(target=_save_and_get_killed, args=(path, call))
    writer.start()
    writer.join(timeout=60)
    assert writer.exitcode == -signal.SIGKILL
    assert fill_of(path) == 1.0
    assert [name for name in entries(path) if f"-{writer.pid}-" in name]  # what it left behind
    save_model(filled(3.0), path)
    assert fill_of(path) == 3.0 and entries(path) == ["checkpoint.json", current_version(path).name]


def test_the_next_save_removes_leftovers_of_dead_writers_only(tmp_path):
    path = save_model(filled(1.0), tmp_path / "m")
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()  # its pid is free now
    (path / f".tmp-{finished.pid}-{'a' * 32}").mkdir()
    (path / f".tmp-{finished.pid}-{'a' * 32}" / "model.safetensors").write_bytes(b"half")
    (path / f".tmp-{finished.pid}-{'b' * 32}.json").write_text("{")
    (path / f"v-{finished.pid}-{'c' * 32}").mkdir()  # renamed, never pointed to
    in_progress = f".tmp-{os.getpid()}-{'d' * 32}"  # another writer of a live process, still writing
    (path / in_progress).mkdir()
    save_model(filled(2.0), path)
    assert entries(path) == sorted([in_progress, "checkpoint.json", current_version(path).name])
    assert fill_of(path) == 2.0


def _save_repeatedly(path, value, times=12):
    for _ in range(times):
        save_model(filled(value), path)


@pytest.mark.parametrize("kind", ["threads", pytest.param("processes", marks=needs_fork)])
def test_concurrent_writers_and_a_reader_never_clash(tmp_path, kind):
    path = save_model(filled(0.0), tmp_path / "m")
    values = (1.0, 2.0, 3.0)
    errors = []
    if kind == "threads":

        def write(value):
            try:
                _save_repeatedly(path, value)
            except Exception as e:
                errors.append(e)

        writers = [threading.Thread(target=write, args=(v,)) for v in values]
    else:
        writers = [multiprocessing.get_context("fork").Process(target=_save_repeatedly, args=(path, v)) for v in values]
    for w in writers:
        w.start()
    seen, deadline = set(), time.monotonic() + 60
    while any(w.is_alive() for w in writers) and time.monotonic() < deadline:
        seen.add(fill_of(path))  # never raises, and config and weights always match
    for w in writers:
        w.join(timeout=1)
    assert not any(w.is_alive() for w in writers)
    assert errors == [] and all(getattr(w, "exitcode", 0) == 0 for w in writers)
    assert seen <= {0.0, *values} and fill_of(path) in values
    assert entries(path) == ["checkpoint.json", current_version(path).name]


def test_a_reader_whose_version_is_removed_meanwhile_reads_the_new_one(tmp_path, monkeypatch):
    path = save_model(filled(1.0), tmp_path / "m")
    save_in_between = lambda: save_model(filled(2.0), path)  # removes the version the reader is about to read
    monkeypatch.setattr(checkpoint, "_read_pointer", on_call(checkpoint._read_pointer, 1, save_in_between, after=True))
    assert fill_of(path) == 2.0
