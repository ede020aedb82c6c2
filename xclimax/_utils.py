"""Small helpers shared across xclimax modules (no torch, no model code)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch


from .options import OPTIONS

__all__ = ["resolve_device", "atomic_write"]


def resolve_device(device: Any = None) -> "torch.device":
    """Return the torch device to use: ``device`` or the ``device`` option (``"auto"``: CUDA if available).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    device = OPTIONS["device"] if device is None else device
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        from .exceptions import XClimaxError

        raise XClimaxError(f"device must be a torch device such as 'cpu', 'cuda', 'cuda:0' or 'auto'; "
                           f"got {device!r}") from None
    if out.type == "cuda" and not torch.cuda.is_available():
        from .exceptions import XClimaxError

        raise XClimaxError(f"device is {device!r} but CUDA is not available on this machine; use 'cpu' or 'auto'")
    return out


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would change it process-wide)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file beside ``path``, then it replaces ``path``.

    Readers see the old file or the whole new one, never a partial file; on error the temporary
    file is removed and ``path`` is untouched. The new file keeps the mode of the file it replaces
    (or the umask's default), and it and its directory are synced to disk.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(d / "a.txt", lambda tmp: pathlib.Path(tmp).write_text("hello")).read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path
