"""Who did something: user, host, process, job, rank, code and environment.

Every event and every ledger entry carries an :class:`Identity`. It is read from the process and
the scheduler's variables (Slurm, torchrun / torch.distributed, Kubernetes) without running any
command: the runtime guard builds identities inside training jobs, where spawning ``git`` would be
both slow and an audit event of its own.

Example::

    from trainguard.core.identity import Identity
    me = Identity.current()
    print(me.user, me.host, me.job, me.rank, me.git_commit)
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

#: environment variables read for the job id, in order of preference
_JOB_VARS = ("TRAINGUARD_JOB_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "JOB_ID", "PBS_JOBID",
             "LSB_JOBID")
#: environment variables read for the global rank, in order of preference
_RANK_VARS = ("RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
_WORLD_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK")


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return value
    return None


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _scheduler(env: Mapping[str, str]) -> str | None:
    if "SLURM_JOB_ID" in env:
        return "slurm"
    if "KUBERNETES_SERVICE_HOST" in env:
        return "kubernetes"
    if "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env:
        return "torchrun"
    return None


def git_commit(start: Path | None = None, *, max_parents: int = 64) -> str | None:
    """The commit checked out in the git work tree containing ``start`` (default: cwd), or None.

    Reads ``.git/HEAD`` and the ref it names (loose or packed) without running git. A dirty tree
    is not detected here: that would need hashing the tree.
    """
    here = (start or Path.cwd()).absolute()
    for i, d in enumerate((here, *here.parents)):
        if i > max_parents:
            break
        dotgit = d / ".git"
        try:
            if dotgit.is_file():  # worktree or submodule: "gitdir: <path>"
                text = dotgit.read_text(encoding="utf-8", errors="replace").strip()
                if not text.startswith("gitdir:"):
                    return None
                dotgit = (d / text.split(":", 1)[1].strip()).resolve()
            elif not dotgit.is_dir():
                continue
            return _resolve_head(dotgit)
        except OSError:
            return None
    return None


def _resolve_head(gitdir: Path) -> str | None:
    head = (gitdir / "HEAD").read_text(encoding="utf-8", errors="replace").strip()
    if not head.startswith("ref:"):
        return head if len(head) in (40, 64) else None
    ref = head.split(":", 1)[1].strip()
    # A linked worktree keeps refs in the common dir.
    common = gitdir
    commondir = gitdir / "commondir"
    if commondir.is_file():
        common = (gitdir / commondir.read_text(encoding="utf-8").strip()).resolve()
    for base in (gitdir, common):
        loose = base / ref
        if loose.is_file():
            value = loose.read_text(encoding="utf-8", errors="replace").strip()
            return value or None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(" ", 1)
            if len(parts) == 2 and parts[1].strip() == ref:
                return parts[0]
    return None  # an unborn branch


@dataclass(frozen=True)
class Identity:
    """Who and where: the fields every event and ledger entry records."""

    user: str
    host: str
    pid: int
    #: scheduler job id (Slurm, torchrun run id, ``TRAINGUARD_JOB_ID``), if any
    job: str | None = None
    #: global rank and world size in a distributed job, if any
    rank: int | None = None
    world_size: int | None = None
    local_rank: int | None = None
    #: "slurm", "torchrun", "kubernetes" or None
    scheduler: str | None = None
    #: git commit of the code in the working directory, if it is a git work tree
    git_commit: str | None = None
    #: environment digest (``trainguard env snapshot``), when known
    env_digest: str | None = None
    #: the signing identity (key id, certificate subject or email), when the action was signed
    signer: str | None = None

    @classmethod
    def current(cls, *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                with_git: bool = True) -> Identity:
        """The identity of this process, from the OS and the scheduler's variables."""
        env = os.environ if env is None else env
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry in some containers
            user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
        host = env.get("TRAINGUARD_HOST") or env.get("SLURMD_NODENAME") or socket.gethostname()
        return cls(
            user=user,
            host=host,
            pid=os.getpid(),
            job=_first(env, _JOB_VARS),
            rank=_int_or_none(_first(env, _RANK_VARS)),
            world_size=_int_or_none(_first(env, _WORLD_VARS)),
            local_rank=_int_or_none(_first(env, _LOCAL_RANK_VARS)),
            scheduler=_scheduler(env),
            git_commit=git_commit(cwd) if with_git else None,
            env_digest=env.get("TRAINGUARD_ENV_DIGEST") or None,
        )

    def with_(self, **changes: Any) -> Identity:
        """A copy with some fields changed (``signer``, ``env_digest``, ...)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Identity:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer writers), types checked."""
        values = {k: v for k, v in data.items() if k in _IDENTITY_FIELDS}
        for key in ("user", "host"):
            if not isinstance(values.get(key), str):
                raise ValueError(f"identity.{key} must be a string")
        if not isinstance(values.get("pid"), int):
            raise ValueError("identity.pid must be an integer")
        return cls(**values)

    def short(self) -> str:
        """``user@host[job=..,rank=..]`` for one-line messages."""
        text = f"{self.user}@{self.host}"
        extra = [f"{k}={v}" for k, v in (("job", self.job), ("rank", self.rank)) if v is not None]
        return text + (f"[{','.join(extra)}]" if extra else "")


#: field names, computed once: from_dict runs for every event read back from a ledger or JSONL
_IDENTITY_FIELDS = frozenset(f.name for f in fields(Identity))
