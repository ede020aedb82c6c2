"""Training state on disk: atomic checkpoints of model, optimiser, scheduler, RNG and data position."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from .._utils import atomic_write
from ..exceptions import CheckpointError

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])


def save_state(directory: Path, state: dict, keep: int = 2) -> Path:
    """Write a training state atomically (temporary file + ``os.replace``) and prune old ones."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"state-{state['step']:09d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in sorted(directory.glob("state-*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_state(directory: Path) -> dict | None:
    files = sorted(directory.glob("state-*.pt")) if directory.exists() else []
    if not files:
        return None
    try:
        return torch.load(files[-1], map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read the training state {str(files[-1])!r}: {err}") from None


