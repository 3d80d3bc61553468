"""Where a result came from: the git commit of the checkout, read from ``.git`` files.

Used by the tuner (the ``commit`` of a tuning file) and by ``perf`` (the commit beside every
number). No git process is run: ``HEAD``, loose refs and ``packed-refs`` are read directly, in
the git directory and, for a linked worktree, in its common directory.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["COMMIT_ENV", "git_commit"]

COMMIT_ENV = "TRITONKRON_GIT_COMMIT"
"""Environment variable that overrides the commit (for copies of a checkout without ``.git``)."""


def _git_dir(folder: Path) -> Path | None:
    """The git directory of ``folder``: ``folder/.git``, or where a ``.git`` file (``gitdir: …``,
    worktrees and submodules) points; None when ``folder`` has neither."""
    dot_git = folder / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():
        return (folder / dot_git.read_text().split(":", 1)[1].strip()).resolve()
    return None


def _resolve_ref(git: Path, ref: str) -> str | None:
    """The commit of ``ref`` (e.g. ``refs/heads/main``) from a loose ref or ``packed-refs``, looked up
    in ``git`` and then in its common directory (``commondir``, linked worktrees)."""
    common = (
        (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").exists() else git
    )
    for base in (git, common):
        if (base / ref).is_file():
            return (base / ref).read_text().strip()
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    return None


def git_commit(start: Path) -> str | None:
    """The commit checked out in the nearest folder at or above ``start`` that has a ``.git``.

    ``$TRITONKRON_GIT_COMMIT`` (:data:`COMMIT_ENV`), when set, is returned instead. None when
    there is no ``.git``, it cannot be read, or its branch has no commit yet.
    """
    override = os.environ.get(COMMIT_ENV)
    if override:
        return override
    for folder in (start, *start.parents):
        try:
            git = _git_dir(folder)
            if git is None:
                continue
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head  # detached HEAD
            return _resolve_ref(git, head.split(":", 1)[1].strip())
        except (OSError, IndexError):
            return None
    return None
