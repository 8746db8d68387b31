"""Run dirs: claimed atomically, locked while a run uses them, and cleaned of exactly what a refused run made.

A new dir is made with `mkdir` (it fails if the dir exists), so two runs started in the same second never share
one; a dir the user names must be new or empty. A run holds a `flock` on `<run dir>/.lock` until its process
ends (the kernel frees a dead process's lock, so a stale one is taken over). A run dir is data, never
instructions: an existing one is checked (`check_contents`), writes go through `write_file` (atomic, never
through a link) and deletions of checkpoints through `own_file`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from echo_lstm.machinery.errors import ConfigError

LOCK = ".lock"
SLURM_JOB = ".slurm_job_id"  # the SLURM job that made the dir: only it, requeued, continues the run in it


@dataclass
class Claim:
    path: Path
    created: bool  # this process made the dir
    existed: set[str] = field(default_factory=set)  # names in the dir before this process
    log_sizes: dict[str, int] = field(default_factory=dict)  # files it may append to: their size before
    added: list[Path] = field(default_factory=list)  # paths inside existing subdirs that this process makes
    lock_fd: int | None = None
    claimed_at: float = field(default_factory=time.time)

    def trained(self) -> bool:
        """Whether this process wrote a checkpoint here: then the dir holds a run to keep, however it ended."""
        last = self.path / "checkpoints" / "last.ckpt"
        return last.is_file() and last.stat().st_mtime >= self.claimed_at

    def release(self, remove: bool = False) -> None:
        """Unlock; with `remove` (a refused run), take away what this process added, unless it has trained: the
        dir if it made it, else the files it added, and its logs cut back to their length before it."""
        if remove and self.path.is_dir() and not self.trained():
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                for path in self.added:
                    shutil.rmtree(path, ignore_errors=True)
                for child in self.path.iterdir():
                    if child.name not in self.existed and child.name != LOCK:
                        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
                for name, size in self.log_sizes.items():
                    with contextlib.suppress(OSError):  # never through a link
                        fd = os.open(self.path / name, os.O_WRONLY | os.O_NOFOLLOW)
                        try:
                            if os.fstat(fd).st_size > size:
                                os.ftruncate(fd, size)
                        finally:
                            os.close(fd)
                if LOCK not in self.existed:
                    (self.path / LOCK).unlink(missing_ok=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # closing the descriptor releases the flock
            self.lock_fd = None


def write_file(path: Path, data: str | bytes) -> None:
    """Write `path` atomically (a temporary file beside it, fsynced, renamed over it), never through a symlink: a
    link planted at `path` or at the temporary name is replaced, its target untouched. Raises OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:  # a stale one of ours (a killed write): unlinking a name never touches a link's target
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def own_file(path: str | Path, root: Path) -> bool:
    """Whether `path` names a regular file under `root`, with no `..` and no symlink on the way: the only kind of
    path (read from a checkpoint, say) that this app may delete or replace."""
    text = os.fspath(path)
    if not text or ".." in Path(text).parts:
        return False
    full = Path(os.path.abspath(text))
    for base in {Path(os.path.abspath(root)), Path(os.path.realpath(root))}:
        if not full.is_relative_to(base):
            continue
        nodes = [base, *(base / part for part in full.relative_to(base).parts)]
        try:
            modes = [os.lstat(node).st_mode for node in nodes]
        except OSError:
            return False
        return len(nodes) > 1 and not any(stat.S_ISLNK(m) for m in modes) and stat.S_ISREG(modes[-1])
    return False


def check_contents(path: Path, key: str) -> None:
    """Refuse an existing run dir that could turn this app's writes against the user: a symlink in it that leads
    outside it (a log or result appended or rewritten wherever it points), anything but plain files, dirs and such
    links, or a top-level file with other hard links (rewritten in place: train.log, .lock, hparams.yaml)."""
    def refuse(rel: str, what: str) -> ConfigError:
        return ConfigError(key, str(path), f"holds {rel!r}, {what}: a run dir's files are never followed or "
                           "shared; copy the run without links (cp -rL) and use the copy")

    if stat.S_ISLNK(os.lstat(path).st_mode):
        raise ConfigError(key, str(path), "is a symlink: name the run dir itself")
    inside = os.path.realpath(path) + os.sep
    for top, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            full = os.path.join(top, name)
            rel = os.path.relpath(full, path)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):  # (one within the dir is harmless: W&B's wandb/latest-run)
                if not os.path.realpath(full).startswith(inside):
                    raise refuse(rel, "a symlink to outside the run dir")
            elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise refuse(rel, "which is not a regular file or directory")
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and top == os.fspath(path):
                raise refuse(rel, f"a file with {st.st_nlink - 1} other hard link(s)")


def _os_error(key: str, path: Path, error: OSError) -> ConfigError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    return ConfigError(key, str(path), f"cannot be created: {reason}")


def claim_new(path: Path, key: str, unique: bool, hint: str = " (to continue the run in it: resume=<dir>)") -> Claim:
    """Make `path` for a new run and lock it. `unique`: the name is the app's default, so an existing one gets a
    suffix (`_1`, `_2`, ...); else an existing dir must be empty. Raises ConfigError when that cannot be done."""
    path = Path(os.path.abspath(path))  # absolute: the run goes on if its cwd is deleted under it
    candidates = [path] + ([path.with_name(f"{path.name}_{i}") for i in range(1, 1000)] if unique else [])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for candidate in candidates:
            try:
                candidate.mkdir()
                return lock(Claim(candidate, created=True), key)
            except FileExistsError:
                if unique:
                    continue
                if not candidate.is_dir():
                    raise ConfigError(key, str(path), "exists and is not a directory") from None
                if any(candidate.iterdir()):
                    raise ConfigError(key, str(path), f"exists and is not empty: a new run needs a new or empty "
                                      f"directory{hint}") from None
                return lock(Claim(candidate, created=False), key)
    except OSError as error:  # a symlink loop, a name too long, a read-only or virtual file system ...
        raise _os_error(key, path, error) from None
    raise ConfigError(key, str(path), "no free name with a numbered suffix")


def claim_existing(path: Path, key: str, appends: tuple[str, ...] = ()) -> Claim:
    """Lock an existing run dir (a resume), recording what is in it and the sizes of `appends` (logs)."""
    path = Path(os.path.abspath(path))
    check_contents(path, key)
    claim = Claim(path, created=False, existed={p.name for p in path.iterdir()})
    claim.log_sizes = {name: (path / name).stat().st_size for name in appends if (path / name).is_file()}
    return lock(claim, key)


def lock(claim: Claim, key: str) -> Claim:
    """Take `<dir>/.lock` (flock) and write our PID into it; refuse when a live process holds it."""
    import fcntl

    try:
        fd = os.open(claim.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        claim.release(remove=True)
        raise _os_error(key, claim.path, error) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(key, str(claim.path), f"is in use by a live run ({holder}); wait for it to end or "
                              "stop it first") from None
        raise _os_error(key, claim.path, error) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    claim.lock_fd = fd
    return claim


def requeued_slurm_job(run_dir: Path) -> bool:
    """A requeued SLURM job re-runs in the dir it marked with its job id (resume.starting_point then continues from
    its last.ckpt, if that checkpoint is the job's own)."""
    job = os.environ.get("SLURM_JOB_ID")
    marker = run_dir / SLURM_JOB
    return bool(job) and marker.is_file() and marker.read_text().strip() == job


def safe_subdir(value: object, key: str) -> str:
    """A dir name inside the run (or sweep) dir: relative, without `..`, not the dir itself."""
    text = str(value)
    parts = Path(text).parts
    if not text or Path(text).is_absolute() or ".." in parts or all(p == "." for p in parts):
        raise ConfigError(key, text, "must be a relative path inside its dir, without '..' (nothing of a run is "
                          "written outside its dir)")
    return text


def claimed_job_dir(subdir: object, *, _root_: object) -> str:
    """Resolver wrapped around `hydra.sweep.subdir` (preflight): Hydra resolves it for each job right before it
    writes into the job's dir, so the dir is claimed and locked here like a run dir (new or empty, inside the sweep
    dir), held while the job runs (train.py releases it)."""
    from omegaconf import OmegaConf

    from echo_lstm.machinery.distributed import is_secondary_rank

    name = safe_subdir(subdir, "hydra.sweep.subdir")
    path = Path(os.path.abspath(os.path.join(str(OmegaConf.select(_root_, "hydra.sweep.dir")), name)))
    if is_secondary_rank() or str(path) in jobs:  # rank 0 claims the job's dir, once (it is resolved more than once)
        return name
    if requeued_slurm_job(path):  # a job SLURM requeued continues in its own dir (its last.ckpt)
        jobs[str(path)] = claim_existing(path, "hydra.sweep.subdir", appends=("train.log",))
    else:
        jobs[str(path)] = claim_new(path, "hydra.sweep.subdir", unique=False, hint=": each job needs its own dir "
                                    "(hydra.sweep.subdir must differ per job, e.g. hold ${hydra.job.num})")
    return name


# The claims of this process, made before Hydra writes into the dirs (preflight, resume); read on a refusal.
current: Claim | None = None  # the run's dir
sweep: Claim | None = None  # a multirun's sweep dir
jobs: dict[str, Claim] = {}  # a multirun's job dirs claimed in this process (by path), until each job ends
