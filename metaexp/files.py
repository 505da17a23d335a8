"""Writing a file so that a crash, a full disk or a second writer never leaves a half-written one in its place."""

import contextlib
import os
import tempfile
from pathlib import Path

from metaexp.errors import MetaexpError


def user_cache() -> Path:
    """metaexp's folder in the user's cache (XDG_CACHE_HOME or ~/.cache): what a machine computes once and keeps."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metaexp"


@contextlib.contextmanager
def replacing(path: Path, mode: str = "wb"):
    """A uniquely named temporary file beside `path`, renamed over it when the block succeeds and removed when
    it fails; `path` itself only ever holds a complete old or a complete new file. A write that fails for
    lack of space or permission becomes a MetaexpError that names the file and what to do."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise unwritable(path, error) from error
    try:
        # mkstemp creates 0600; the file gets what a plain open() would give it, so collaborators can read it.
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as file:
            yield file
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError from its zip writer.
        if isinstance(error, (OSError, RuntimeError)) and not isinstance(error, MetaexpError):
            raise unwritable(path, error) from error
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def unwritable(path: Path, error: Exception) -> MetaexpError:
    reason = getattr(error, "strerror", None) or str(error).splitlines()[0][:200]
    kept = f" The previous {path.name} is unchanged." if path.is_file() else ""
    return MetaexpError(
        f"Could not write {path} ({reason}).{kept} Free some disk space, or write somewhere writable "
        f"(paths.output_dir=DIR or hydra.run.dir=DIR for runs, eval.output=FILE for reports)."
    )
