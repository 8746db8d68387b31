"""Run dirs: claimed atomically, locked while a run uses them, and cleaned of exactly what a refused run made.

- A new run's dir is made with `mkdir` (which fails if the dir exists), so two runs started in the same second
  never share one: the default name (`outputs/runs/<date>_<time>`) then gets a suffix (`_1`, `_2`, ...). A dir
  the user names (`hydra.run.dir=...`) must not exist yet or be empty: nothing of theirs is ever overwritten.
- A run holds an exclusive lock (`flock`) on `<run dir>/.lock`, which holds its PID, until its process ends; a
  second process that would use the dir (a resume) is refused while the first is alive. The kernel releases
  the lock of a process that died, so a stale lock is taken over without a question.
- When a run is refused after its dir was claimed, `release(remove=True)` removes what this process made: the
  dir if it made it, else (an empty dir the user named, or a run being resumed) only the files it added, and
  the run's log is cut back to its length before this process.
- A run dir is data, never instructions: an existing one (a resume, a requeued job) is refused if it holds a
  symlink that leads outside it, anything but plain files and dirs, or a top-level file with other hard links
  (`check_contents`), so no write of this app lands outside it. Writes go through `write_file` (atomic, never
  through a link) and deletions of checkpoints through `own_file` (a regular file inside the dir, reached without
  a link).
"""

from __future__ import annotations

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
        """Unlock; with `remove`, take away everything this process added to the dir (see the module doc), unless
        it has written a checkpoint (then the dir holds a run, however it ended)."""
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
                    _truncate(self.path / name, size)
                if LOCK not in self.existed:
                    (self.path / LOCK).unlink(missing_ok=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # closing the descriptor releases the flock
            self.lock_fd = None


def _truncate(path: Path, size: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path: Path, data: str | bytes) -> None:
    """Write `path` atomically (a temporary file beside it, fsynced, renamed over it), never through a symlink: a
    link planted at `path` or at the temporary name is replaced, its target untouched. Raises OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = data.encode() if isinstance(data, str) else data
    fd = open_new(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_new(path: Path) -> int:
    """A new file at `path` for writing (O_EXCL, O_NOFOLLOW); a stale one of ours (a killed write) is unlinked
    first: unlinking a name never touches what a link points to."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        return os.open(path, flags, 0o644)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, 0o644)


def own_file(path: str | Path, root: Path) -> bool:
    """Whether `path` names a regular file under `root`, with no `..` and no symlink on the way: the only kind of
    path (read from a checkpoint, say) that this app may delete or replace."""
    text = os.fspath(path)
    if not text or ".." in Path(text).parts:
        return False
    full = Path(os.path.abspath(text))
    for base in {Path(os.path.abspath(root)), Path(os.path.realpath(root))}:
        try:
            rel = full.relative_to(base)
        except ValueError:
            continue
        node, mode = base, 0
        try:
            if stat.S_ISLNK(os.lstat(base).st_mode):
                return False
            for part in rel.parts:
                node = node / part
                mode = os.lstat(node).st_mode
                if stat.S_ISLNK(mode):
                    return False
        except OSError:
            return False
        return bool(rel.parts) and stat.S_ISREG(mode)
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
                continue
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise refuse(rel, "which is not a regular file or directory")
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and top == os.fspath(path):
                raise refuse(rel, f"a file with {st.st_nlink - 1} other hard link(s)")


def _os_error(key: str, path: Path, error: OSError) -> ConfigError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    return ConfigError(key, str(path), f"cannot be created: {reason}")


def claim_new(path: Path, key: str, unique: bool, hint: str = " (to continue the run in it: resume=<dir>)") -> Claim:
    """Make `path` for a new run and lock it. `unique`: the name is the app's default, so an existing one gets a
    suffix; else an existing dir must be empty. Raises ConfigError with the reason when that cannot be done."""
    path = Path(os.path.abspath(path))  # absolute: the run goes on if its cwd is deleted under it
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _os_error(key, path, error) from None
    candidates = [path] + ([path.with_name(f"{path.name}_{i}") for i in range(1, 1000)] if unique else [])
    for candidate in candidates:
        try:
            candidate.mkdir()
            return lock(Claim(candidate, created=True), key)
        except FileExistsError:
            if unique:
                continue
            if not candidate.is_dir():
                raise ConfigError(key, str(path), "exists and is not a directory") from None
            existing = {p.name for p in candidate.iterdir()}
            if existing:
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

    path = claim.path / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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
    """A requeued SLURM job re-runs in its dir, which it marked with its job id (training.starting_point then
    continues from its last.ckpt, if that checkpoint is the job's own)."""
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
    makes the job's dir and writes into it, so the job dir is claimed and locked here exactly like a run dir: a
    new or empty dir (two jobs with one subdir: the second is refused), inside the sweep dir, held while the job
    runs (train.py releases it)."""
    from omegaconf import OmegaConf

    from echo_lstm.machinery.distributed import is_secondary_rank

    name = safe_subdir(subdir, "hydra.sweep.subdir")
    path = Path(os.path.abspath(os.path.join(str(OmegaConf.select(_root_, "hydra.sweep.dir")), name)))
    if is_secondary_rank():  # a DDP rank > 0 of the job (srun's task under submitit): rank 0 claims the dir
        return name
    if str(path) not in jobs:  # (resolved more than once per job: claimed once)
        if requeued_slurm_job(path):  # a job SLURM requeued continues in its own dir (its last.ckpt)
            jobs[str(path)] = claim_existing(path, "hydra.sweep.subdir", appends=("train.log",))
        else:
            jobs[str(path)] = claim_new(path, "hydra.sweep.subdir", unique=False, hint=": each job needs its own "
                                        "dir (hydra.sweep.subdir must differ per job, e.g. hold ${hydra.job.num})")
    return name


# The claims of this process, made before Hydra writes into the dirs (preflight, resume); read on a refusal.
current: Claim | None = None  # the run's dir
sweep: Claim | None = None  # a multirun's sweep dir
jobs: dict[str, Claim] = {}  # a multirun's job dirs claimed in this process (by path), until each job ends
