"""Checkpoints: folders of safetensors and JSON (nothing is ever unpickled), switched atomically, verified on load.

A checkpoint is the folder ``path`` you name::

    path/
      checkpoint.json          which version is current, and the SHA-256 of each of its files
      v-<pid>-<id>/            the current version (:func:`current_version` gives its path):
        model.safetensors      the weights, tied weights stored once
        config.json            the model's config, and which weights are tied to which
        trainer.safetensors    Trainer.save only: optimizer tensors, RNG states, best weights
        trainer.json           Trainer.save only: step, history, optimizer and scaler settings, Python/NumPy RNG states
      .tmp-<pid>-<id>/         a version being written, or left behind by a writer that was killed

Writing files in place, or swapping two folders, has moments at which an interrupt leaves no checkpoint and a
reader pairs one save's config with another's weights. Here a writer fills ``.tmp-…`` (fsync'd), then, holding an
exclusive lock on ``path`` so that concurrent writers take turns, renames it to ``v-…`` and replaces
``checkpoint.json`` with one ``os.replace`` of a file, which is atomic: at every instant ``checkpoint.json`` names
one complete version, whatever is interrupted. Then it removes the other versions and the ``.tmp-…`` of writers
whose process is gone (a leftover whose pid a new process took stays until that one ends). Locks and pids are
those of one machine: a folder that several machines write at once is not guarded, nor are writers on Windows
(which has no ``flock``; leftovers stay there). A lone writer is atomic everywhere.

A reader reads ``checkpoint.json`` once and every file from the version it names, so config and weights always
belong together. The previous version is not kept: when a writer removes the version a reader is reading, the
reader finds ``checkpoint.json`` moved on and reads the new version instead. Every file must match its SHA-256 and
the weights must be finite, or loading raises :class:`CheckpointError` (so does a folder of the first layout, with
``model.safetensors`` and ``config.json`` directly in ``path``: save it again).

Chapter 04, section 4 saves the pretrained model as one and explains this layout; chapters 05 and 06 load it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as tensors_to_bytes

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

FORMAT = "gpt-inside-and-out/checkpoint"
FORMAT_VERSION = 2  # version 1 kept the files directly in the folder, without checkpoint.json
POINTER_FILE = "checkpoint.json"
MODEL_FILE, CONFIG_FILE = "model.safetensors", "config.json"
STATE_FILE, TRAINER_FILE = "trainer.safetensors", "trainer.json"
_TRAINER_KEYS = (
    "step",
    "best_val",
    "best_step",
    "bad_evals",
    "stopped_early",
    "elapsed_s",
    "optimizer",
    "scaler",
    "rng",
    "history",
)
_VERSION = re.compile(r"v-\d+-[0-9a-f]{32}")
_LEFTOVER = re.compile(r"\.tmp-(\d+)-[0-9a-f]{32}(\.json)?")
_READ_ATTEMPTS = 10  # each retry means another save finished meanwhile, so only a stream of saves exhausts them


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt, or does not fit the model it is loaded into.

    Not shown in a notebook: chapter 04's :func:`helpers.recipes.pretrain.load_pretrained` retrains on one.
    """


class NoCheckpointError(CheckpointError):
    """There is no checkpoint at the path: no folder, or one without ``checkpoint.json`` or ``config.json``.

    Not shown in a notebook: chapter 04's :func:`helpers.recipes.pretrain.load_pretrained` then trains the model.
    """


# ---- writing ------------------------------------------------------------------------------------------------


def _write_file(file: Path, data: bytes) -> None:
    with open(file, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json_bytes(data: dict) -> bytes:
    return json.dumps(data, indent=1).encode()


@contextlib.contextmanager
def _writer_lock(path: Path):
    """Hold an exclusive lock on the folder ``path`` (released when the process dies, too)."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _remove_leftovers(path: Path, current: str) -> None:
    """Remove the versions other than ``current`` and the temporary files of dead writers (under the lock, where no
    other writer is between renaming its version and pointing to it)."""
    for entry in path.iterdir():
        leftover = _LEFTOVER.fullmatch(entry.name)
        if (_VERSION.fullmatch(entry.name) and entry.name != current) or (leftover and not _alive(int(leftover[1]))):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    for name in (MODEL_FILE, CONFIG_FILE, STATE_FILE, TRAINER_FILE):  # a first-layout checkpoint saved over
        (path / name).unlink(missing_ok=True)


def _write_checkpoint(path, files: dict[str, bytes]) -> Path:
    """Write ``files`` as a new version of the checkpoint ``path`` and make it the current one."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex}"
    tmp, version, new_pointer = path / f".tmp-{tag}", path / f"v-{tag}", path / f".tmp-{tag}.json"
    pointer = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "folder": version.name,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    tmp.mkdir()
    try:
        for name, data in files.items():
            _write_file(tmp / name, data)
        with _writer_lock(path):
            os.replace(tmp, version)
            _write_file(new_pointer, _json_bytes(pointer))
            os.replace(new_pointer, path / POINTER_FILE)
            _remove_leftovers(path, version.name)
    finally:  # after a failure; the next writer removes a renamed version that never became current
        shutil.rmtree(tmp, ignore_errors=True)
        new_pointer.unlink(missing_ok=True)
    return path


def _config_dict(config) -> dict:
    if config is None:
        return {}
    if is_dataclass(config):
        return asdict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)


def _unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a state dict into one copy of each tensor and ``{alias: name}`` for the tensors that share storage
    with an earlier one (tied weights such as ``lm_head.weight`` and ``transformer.wte.weight``)."""
    unique, aliases, seen = {}, {}, {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t.detach().cpu().contiguous()
    return unique, aliases


def _model_files(model: torch.nn.Module, config) -> dict[str, bytes]:
    tensors, aliases = _unique_tensors(model.state_dict())
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "config": _config_dict(config), "aliases": aliases}
    return {MODEL_FILE: tensors_to_bytes(tensors), CONFIG_FILE: _json_bytes(meta)}


def save_model(model: torch.nn.Module, path, config=None) -> Path:
    """Save the weights and ``config`` (a dict or dataclass; default: ``model.config``) as the checkpoint ``path``.

    Its version folder gets ``model.safetensors`` and ``config.json``; tied weights are stored once. Read it back
    with :func:`read_config` (to build the model) and :func:`load_model_state`.

    Chapter 04's :func:`helpers.recipes.pretrain.save_pretrained` saves with it (section 4).
    """
    return _write_checkpoint(path, _model_files(model, getattr(model, "config", None) if config is None else config))


# ---- reading ------------------------------------------------------------------------------------------------


def _parse_json(data: bytes, name: str, where: Path) -> dict:
    try:
        meta = json.loads(data)
    except ValueError as e:
        raise CheckpointError(f"{name} in {where} is not valid JSON ({e}): the file is corrupt; use another checkpoint.") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{name} in {where} was not written by this course's helpers (no '{FORMAT}' format field): it is a "
            "checkpoint of another program. Save checkpoints with helpers.checkpoint (save_model or Trainer.save)."
        )
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{name} in {where} has format version {meta.get('version')}, this code reads {FORMAT_VERSION}.")
    return meta


def _read_pointer(path: Path) -> dict:
    file = path / POINTER_FILE
    if not file.is_file():
        if (path / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{path} holds {CONFIG_FILE} but no {POINTER_FILE}: it is a checkpoint in the first layout of this course "
                "(files directly in the folder, no checksums) or one of another program, which this code does not read. "
                "Save it again with save_model or Trainer.save (rerun the chapter that wrote it)."
            )
        raise NoCheckpointError(
            f"No checkpoint at {path}: expected a folder holding {POINTER_FILE} (written by save_model or Trainer.save). "
            "Check the path, or train first."
        )
    pointer = _parse_json(file.read_bytes(), POINTER_FILE, path)
    hashes = pointer.get("sha256")
    if not (isinstance(pointer.get("folder"), str) and _VERSION.fullmatch(pointer["folder"]) and isinstance(hashes, dict)):
        raise CheckpointError(f"{POINTER_FILE} in {path} does not name a version folder and its checksums: it is corrupt.")
    return pointer


def _read_files(path: Path, names: tuple[str, ...], absent_hint: str = "Use another checkpoint.") -> dict[str, bytes]:
    """The files ``names`` of one version of the checkpoint ``path`` (the current one), checked against their SHA-256."""
    pointer = _read_pointer(path)
    for _ in range(_READ_ATTEMPTS):
        absent = [name for name in names if name not in pointer["sha256"]]
        if absent:
            raise CheckpointError(f"The checkpoint {path} has no {' or '.join(absent)}. {absent_hint}")
        folder = path / pointer["folder"]
        try:
            files = {name: (folder / name).read_bytes() for name in names}
        except FileNotFoundError as e:
            latest = _read_pointer(path)
            if latest["folder"] != pointer["folder"]:  # a writer replaced that version meanwhile: read the new one
                pointer = latest
                continue
            raise CheckpointError(
                f"The checkpoint {path} is incomplete: {Path(e.filename).name} is missing from {folder.name}. "
                "Use another checkpoint, or save it again."
            ) from e
        for name, data in files.items():
            if hashlib.sha256(data).hexdigest() != pointer["sha256"][name]:
                raise CheckpointError(
                    f"{name} in {folder} fails its SHA-256 check: the file is corrupt (damaged or changed since it was "
                    "saved). Use another checkpoint, or save it again."
                )
        return files
    raise CheckpointError(f"The checkpoint {path} changed {_READ_ATTEMPTS} times while it was read: wait for the saves to end.")


def _parse_tensors(data: bytes, name: str, where: Path) -> dict[str, torch.Tensor]:
    try:
        return tensors_from_bytes(data)
    except SafetensorError as e:
        raise CheckpointError(
            f"{name} in {where} is not a readable safetensors file ({e}): it is truncated or corrupt; use another checkpoint."
        ) from e


def current_version(path) -> Path:
    """The folder that holds the files of the checkpoint ``path`` now (the next save replaces it).

    First used in chapter 04, section 4.
    """
    path = Path(path)
    return path / _read_pointer(path)["folder"]


def read_config(path) -> dict:
    """The model config stored in the checkpoint ``path`` (to build the model before loading weights).

    Not shown in a notebook: chapter 04's :func:`helpers.recipes.pretrain.load_pretrained` reads it.
    """
    path = Path(path)
    return _parse_json(_read_files(path, (CONFIG_FILE,))[CONFIG_FILE], CONFIG_FILE, path)["config"]


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _fitted_state(model: torch.nn.Module, path: Path, files: dict[str, bytes]) -> tuple[dict, dict]:
    """A checkpoint's weights, checked to fit ``model`` and to be finite; returns (state dict, config)."""
    meta = _parse_json(files[CONFIG_FILE], CONFIG_FILE, path)
    tensors = _parse_tensors(files[MODEL_FILE], MODEL_FILE, path)
    for alias, name in meta.get("aliases", {}).items():
        if name not in tensors:
            raise CheckpointError(
                f"{CONFIG_FILE} in {path} ties {alias} to {name}, which {MODEL_FILE} lacks: the checkpoint is corrupt."
            )
        tensors[alias] = tensors[name]
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [
        f"{k} {tuple(tensors[k].shape)} in the checkpoint vs {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [f"missing {_few(missing)}" * bool(missing), f"unexpected {_few(unexpected)}" * bool(unexpected), _few(shapes)]
        raise CheckpointError(
            f"The checkpoint {path} does not fit this model: {'; '.join(p for p in parts if p)}. It was saved from "
            f"another model or config (its config: {meta['config']}); build the model with read_config(path)."
        )
    bad = [k for k, t in tensors.items() if k not in meta.get("aliases", {}) and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(
            f"{MODEL_FILE} in {path} holds non-finite values (NaN or inf) in {_few(bad)}: the model had diverged when it "
            "was saved. Use an earlier checkpoint, or train again (a lower lr, gradient clipping)."
        )
    return tensors, meta["config"]


def load_model_state(model: torch.nn.Module, path) -> dict:
    """Load the weights of the checkpoint ``path`` into ``model`` and return the stored config.

    Works on :func:`save_model` checkpoints and on trainer checkpoints. Raises :class:`CheckpointError` naming what
    is missing, corrupt, non-finite or mismatched. Tied weights stay tied (both names get the one stored copy).

    Not shown in a notebook: chapter 04's :func:`helpers.recipes.pretrain.load_pretrained` loads with it.
    """
    path = Path(path)
    tensors, config = _fitted_state(model, path, _read_files(path, (CONFIG_FILE, MODEL_FILE)))
    model.load_state_dict(tensors)
    return config


# ---- the whole state of a Trainer ---------------------------------------------------------------------------


def _group_names(trainer) -> list[list[str]]:
    return [list(g["names"]) for g in trainer.optimizer.param_groups]


def save_trainer(trainer, path) -> Path:
    """Save the whole training state of ``trainer`` (a :class:`helpers.train.Trainer`) as the checkpoint ``path``;
    :func:`load_trainer` resumes it. Behind :meth:`helpers.train.Trainer.save` (chapter 04); not shown in a notebook."""
    tensors, values = {}, {}
    for group in trainer.optimizer.param_groups:
        for name, p in zip(group["names"], group["params"]):
            for key, v in trainer.optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optimizer.{name}.{key}"] = v.detach().cpu().contiguous()
                else:
                    values.setdefault(name, {})[key] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    for name, t in (trainer._best_weights or {}).items():
        tensors[f"best.{name}"] = t
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": trainer.step,
        "best_val": trainer.best_val,
        "best_step": trainer.best_step,
        "bad_evals": trainer._bad_evals,
        "stopped_early": trainer.stopped_early,
        "elapsed_s": trainer._elapsed,
        "train_config": asdict(trainer.cfg),
        "optimizer": {"groups": _group_names(trainer), "state": values},
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": {
            "python": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        },
        "history": list(trainer.history),
    }
    files = _model_files(trainer.model, getattr(trainer.model, "config", None))
    files[STATE_FILE] = tensors_to_bytes(tensors)
    files[TRAINER_FILE] = _json_bytes(meta)
    return _write_checkpoint(path, files)


def load_trainer(trainer, path) -> None:
    """Put the state of a :func:`save_trainer` checkpoint into ``trainer``: weights, optimizer, scaler, RNG states,
    step, history, best. Everything is read from one version and checked before anything changes.
    Behind :meth:`helpers.train.Trainer.load` (chapter 04); not shown in a notebook."""
    path = Path(path)
    weights_only = "It holds weights only: load them with load_model_state, or use a Trainer.save checkpoint."
    files = _read_files(path, (CONFIG_FILE, MODEL_FILE, STATE_FILE, TRAINER_FILE), weights_only)
    meta = _parse_json(files[TRAINER_FILE], TRAINER_FILE, path)
    missing = [k for k in _TRAINER_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{TRAINER_FILE} in {path} lacks {missing}: the checkpoint is corrupt.")
    weights, _ = _fitted_state(trainer.model, path, files)
    tensors = _parse_tensors(files[STATE_FILE], STATE_FILE, path)
    optimizer_state = _optimizer_state(trainer, meta["optimizer"], tensors, path)
    if "rng.torch" not in tensors:
        raise CheckpointError(f"{STATE_FILE} in {path} lacks the torch RNG state: the checkpoint is corrupt.")
    try:
        py, npy = meta["rng"]["python"], meta["rng"]["numpy"]
        py_state, np_state = (py[0], tuple(py[1]), py[2]), (npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:])
        history = type(trainer.history)(meta["history"])
    except (TypeError, KeyError, IndexError, ValueError) as e:
        raise CheckpointError(
            f"{TRAINER_FILE} in {path} has a malformed RNG state or history ({e!r}): the checkpoint is corrupt."
        ) from e

    trainer.model.load_state_dict(weights)
    trainer.optimizer.load_state_dict(optimizer_state)
    if trainer.scaler is not None and meta["scaler"]:
        trainer.scaler.load_state_dict(meta["scaler"])
    best = {k.removeprefix("best."): t for k, t in tensors.items() if k.startswith("best.")}
    trainer._best_weights = best or None
    trainer.step, trainer.best_val, trainer.best_step = meta["step"], meta["best_val"], meta["best_step"]
    trainer._bad_evals, trainer.stopped_early, trainer._elapsed = meta["bad_evals"], meta["stopped_early"], meta["elapsed_s"]
    trainer.history = history
    random.setstate(py_state)
    np.random.set_state(np_state)
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)


def _optimizer_state(trainer, saved: dict, tensors: dict, path: Path) -> dict:
    """Rebuild ``optimizer.state_dict()`` from a checkpoint's by-name optimizer state, checking it fits."""
    names = _group_names(trainer)
    if saved.get("groups") != names:
        ours = {n for g in names for n in g}
        theirs = {n for g in saved.get("groups", []) for n in g}
        raise CheckpointError(
            f"The optimizer state in {path} does not fit this model's trainable parameters (missing "
            f"{_few(sorted(ours - theirs)) or 'none'}, unexpected {_few(sorted(theirs - ours)) or 'none'}, or grouped "
            "differently): it was saved from another model, or with other parameters frozen."
        )
    by_name: dict[str, dict] = {name: dict(v) for name, v in saved.get("state", {}).items()}
    for key, t in tensors.items():
        if key.startswith("optimizer."):
            name, entry = key.removeprefix("optimizer.").rsplit(".", 1)
            by_name.setdefault(name, {})[entry] = t
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    state = {}
    for i, (name, p) in enumerate(zip([n for g in names for n in g], params)):
        if name in by_name:
            for entry, t in by_name[name].items():
                if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape != p.shape:
                    raise CheckpointError(
                        f"The optimizer state {entry} of {name} in {path} has shape {tuple(t.shape)}, the parameter "
                        f"{tuple(p.shape)}: the checkpoint is from another model."
                    )
            state[i] = by_name[name]
    return {"state": state, "param_groups": trainer.optimizer.state_dict()["param_groups"]}
