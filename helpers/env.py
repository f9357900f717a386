"""Environment: device, seeds, precision, eval mode, Colab detection, the smoke/full switch, where caches and
checkpoints live.

Chapter 00 shows what it reports (section 1) and the smoke/full switch (section 4); every chapter's setup cell uses it.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from pathlib import Path

import numpy as np

#: Set ``COURSE_ALLOW_HUB=1`` to let ``transformers``/``datasets`` reach the Hugging Face Hub (Colab, opt-in cells).
ALLOW_HUB = os.environ.get("COURSE_ALLOW_HUB", "0") == "1"
if not ALLOW_HUB:
    # Without these, a missing file makes the HF libraries retry the network for 20-50 s before failing.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its fork warning clutters notebook output

#: ``COURSE_SMOKE=1`` (set by ``make test`` and CI) shrinks every run to seconds; the default is the full run.
SMOKE = os.environ.get("COURSE_SMOKE", "0") == "1"
MODE = "smoke" if SMOKE else "full"

IN_COLAB = "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ

#: The GitHub ``owner/name`` the Colab badges and setup cells point to; ``python -m tools.notebooks stamp``
#: writes it into every notebook.
REPO_SLUG = "gpt-inside-and-out/gpt-inside-and-out"

ROOT = Path(__file__).resolve().parent.parent


def pick(smoke, full):
    """Return ``smoke`` in smoke mode and ``full`` otherwise, so a notebook states both sizes in one line.

    Taught in chapter 00, section 4.
    """
    return smoke if SMOKE else full


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so that a rerun on the same machine gives the same numbers.

    Called in every chapter's setup cell, from chapter 00's on.
    """
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_device(verbose: bool = True):
    """The best available device: CUDA, then Apple's MPS, then the CPU (said in one line).

    ``COURSE_DEVICE=cpu`` (or ``cuda``, ``mps``) overrides the choice.
    Every chapter's setup cell calls it; chapter 00, section 1 explains the line it prints."""
    import torch

    forced = os.environ.get("COURSE_DEVICE")
    if forced:
        device = torch.device(forced)
        what = "set by COURSE_DEVICE"
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        what = torch.cuda.get_device_name(0)
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
        what = "Apple GPU"
    else:
        device = torch.device("cpu")
        what = f"{torch.get_num_threads()} threads"
    if verbose:
        print(f"device: {device.type} ({what}) | mode: {MODE}")
    return device


def autocast_dtype(device):
    """The mixed-precision dtype for ``device``: bf16 where supported, fp16 on older GPUs (a T4), None on CPU/MPS.

    On the CPU we train in float32: bf16 autocast there is slower than fp32 on most laptop CPUs.

    Not shown in a notebook: chapter 04's :class:`helpers.train.Trainer` picks its precision with it.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device, dtype=None):
    """A context manager for mixed precision on ``device`` (a no-op where ``autocast_dtype`` gives None).

    Not shown in a notebook: chapter 04's :class:`helpers.train.Trainer` trains under it on a GPU.
    """
    import torch

    dtype = dtype if dtype is not None else autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(*modules):
    """Put ``modules`` in eval mode (no dropout) for the ``with`` block, then back in the mode each was in.

    Not shown in a notebook: ``GPT.generate``, beam search and the Trainer's evaluation (chapters 03-06) rely on it.
    """
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def sync(device) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not just its launch (CUDA runs asynchronously).

    First used in chapter 02, section 7.
    """
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cache_dir() -> Path:
    """Where extracted data and trained artefacts are kept: ``$COURSE_CACHE`` or ``~/.cache/gpt-inside-and-out``.

    Not shown in a notebook: :mod:`helpers.data` caches the corpus here (chapter 00 on); :func:`artifact_dir` builds on it.
    """
    path = Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "gpt-inside-and-out"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_dir(name: str) -> Path:
    """A folder for one chapter's outputs (tokenizers, checkpoints), kept apart for smoke and full runs.

    Chapters look for each other's results here, e.g. ``artifact_dir("pretrained")`` written by chapter 04.

    Not shown in a notebook: the course tokenizer (chapter 01) and chapter 04's recipe save here.
    """
    path = cache_dir() / "artifacts" / MODE / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash never leaves a half-written file behind.

    Not shown in a notebook: the caches of :mod:`helpers.data` (chapter 00) and :mod:`helpers.tokenizers` (chapter 01),
    and repository tooling, write with it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def report() -> dict:
    """Versions, device and mode as a dict (printed in chapter 00, section 1, and stored in notebook metadata)."""
    import platform

    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "mode": MODE,
        "colab": IN_COLAB,
        "hub": "allowed" if ALLOW_HUB else "offline",
    }
    for pkg in ("transformers", "tokenizers", "sacrebleu", "numpy"):
        try:
            info[pkg] = __import__(pkg).__version__
        except ImportError:
            info[pkg] = None
    return info
