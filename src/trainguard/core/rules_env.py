"""Rules for Python environment integrity (issue 4): ids TG-ENV-NNN, never reused.

Listed in the one registry (:mod:`trainguard.core.rules`), which checks ids are unique.
"""

from __future__ import annotations

from trainguard.core.findings import Severity
from trainguard.core.rules import Rule

_C, _H, _M, _L = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW

RULES: list[Rule] = [
    Rule("TG-ENV-001", "Installed file differs from its RECORD hash", _H,
         "The file's bytes no longer match the hash the installer wrote into the distribution's "
         "RECORD (PEP 376/PEP 627): someone edited installed code or data after installation, "
         "the classic way to change torch.optim or a data loader for every job that uses the "
         "environment.",
         "Reinstall the distribution (pip install --force-reinstall --no-deps NAME==VERSION) and "
         "find out who could write to the environment."),
    Rule("TG-ENV-002", "File listed in RECORD is missing", _M,
         "A file the installer put in place is gone. Removing a module can disable a safety "
         "check or let a module of the same name elsewhere on sys.path take its place.",
         "Reinstall the distribution and check who changed the environment."),
    Rule("TG-ENV-003", "File is not owned by any installed distribution", _M,
         "No RECORD lists this file. Importable code dropped into site-packages (a module, an "
         "extension, a sourceless .pyc) runs as soon as something imports its name.",
         "Remove the file or install it through a package; take a snapshot of the environment "
         "once it is known good (trainguard env snapshot)."),
    Rule("TG-ENV-004", "RECORD rewritten after installation", _H,
         "The distribution's RECORD differs from the snapshot, or was written long after the "
         "installer finished. RECORD sits beside the files it describes, so whoever edits a file "
         "can rewrite its hash too; only a snapshot kept elsewhere shows it.",
         "Compare with a known-good snapshot (trainguard env verify --against) and reinstall."),
    Rule("TG-ENV-005", "Compiled .pyc does not match its source", _H,
         "The .pyc header (PEP 552: source mtime and size, or source hash) does not match the "
         "source beside it. With an unchecked-hash .pyc the stale compiled code runs instead of "
         "the source; with a timestamp .pyc the source was changed after compilation.",
         "Delete the __pycache__ entry and recompile (python -m compileall), then find out why "
         "the source changed."),
    Rule("TG-ENV-006", ".pth file runs code at interpreter start", _H,
         "site.py executes every .pth line that starts with 'import' in each Python process, "
         "before any user code or audit hook, and `python -I` does not stop it.",
         "Remove the line or the file; if it is a known-good hook, allow its digest in "
         "[env] allow_pth of trainguard.toml."),
    Rule("TG-ENV-007", "sitecustomize or usercustomize module present", _H,
         "site.py imports sitecustomize and usercustomize at every interpreter start, before "
         "the job's code, so they can patch anything the job later uses.",
         "Remove the module unless your site deliberately installs it; then snapshot the "
         "environment so changes to it are detected."),
    Rule("TG-ENV-008", "Group- or world-writable file or directory in the environment", _M,
         "On a shared cluster anyone in the group (or anyone at all) can change code every job "
         "in this environment runs.",
         "chmod go-w the path (and its parents); keep environments writable by their owner "
         "only."),
    Rule("TG-ENV-009", "Installed distribution is not in the lock file", _M,
         "The environment holds a package the lock file does not list: installed by hand, by "
         "a dependency confusion attack, or left over from an older lock.",
         "Recreate the environment from the lock file, or add the package to the lock."),
    Rule("TG-ENV-010", "Installed version differs from the lock file", _M,
         "The environment runs another version than the one reviewed and locked.",
         "Recreate the environment from the lock file."),
    Rule("TG-ENV-011", "File differs from the snapshot", _H,
         "The file's digest differs from the snapshot taken when the environment was known "
         "good. This covers files RECORD cannot protect: .pyc files, unowned files, RECORD "
         "itself.",
         "Find out who changed the file; rebuild the environment or take a new snapshot after "
         "review."),
    Rule("TG-ENV-012", "File in the snapshot is missing", _M,
         "A file that was present when the snapshot was taken is gone.",
         "Rebuild the environment or take a new snapshot after review."),
    Rule("TG-ENV-013", "File is not in the snapshot", _M,
         "A file appeared in the environment after the snapshot was taken.",
         "Remove the file or take a new snapshot after review."),
    Rule("TG-ENV-014", "Distributions differ from the snapshot", _M,
         "A distribution was added, removed or changed version since the snapshot.",
         "Rebuild the environment or take a new snapshot after review."),
    Rule("TG-ENV-015", "Interpreter differs from the snapshot", _H,
         "The Python executable, its version or its location changed since the snapshot; every "
         "check of installed files depends on running the interpreter that was reviewed.",
         "Point --python at the interpreter the snapshot was taken from, or re-snapshot."),
    Rule("TG-ENV-016", "Snapshot signature does not verify", _C,
         "The snapshot was changed after it was signed, was signed by another key, or carries "
         "no signature although a public key was given. A snapshot that cannot be checked is "
         "no evidence (fail closed).",
         "Use the snapshot as written by `trainguard env snapshot --key`, and the matching "
         "public key."),
    Rule("TG-ENV-017", "RECORD is malformed or names paths outside the environment", _H,
         "Unparsable rows, absurd sizes or paths that leave the environment ('../../etc/passwd', "
         "absolute paths) are not what installers write; the rows were not followed.",
         "Reinstall the distribution; investigate who wrote the RECORD."),
    Rule("TG-ENV-018", "Variable changes what the interpreter loads", _M,
         "LD_PRELOAD, LD_LIBRARY_PATH, PYTHONPATH, PYTHONHOME, PYTHONSTARTUP and similar "
         "variables make the interpreter load code from outside the verified environment, or "
         "differ from the snapshot.",
         "Unset the variable for training jobs, or review and snapshot it."),
    Rule("TG-ENV-019", "Distribution has no RECORD", _L,
         "Without a RECORD (legacy egg-info installs, hand-made dist-info) installed files "
         "cannot be checked against the installer's hashes.",
         "Reinstall the package with a current installer (pip, uv)."),
    Rule("TG-ENV-020", "File changed since the snapshot (size or ctime)", _M,
         "Quick mode compares size and inode change time with the snapshot without hashing: "
         "the file was written, replaced, re-linked or had its metadata changed.",
         "Run a full `trainguard env verify --against SNAP` to see whether the content changed."),
    Rule("TG-ENV-021", "File cannot be read or is not a regular file", _M,
         "A file in the environment could not be read (permissions, vanished, a link loop, a "
         "FIFO or device), so it was not verified. What was not checked cannot be called clean.",
         "Fix the permissions or remove the entry, then verify again."),
    Rule("TG-ENV-022", ".pth file adds a directory outside the environment to sys.path", _M,
         "Every process then imports from a directory nobody verified; a module there can "
         "shadow an installed one.",
         "Remove the line, or install that code as a package into the environment."),
]
