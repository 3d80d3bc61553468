"""``autotune.provenance.git_commit``: the commit read from ``.git`` files, as the tuner and perf use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.provenance import COMMIT_ENV, git_commit

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMMIT_ENV, raising=False)


def _repo(root: Path, head: str = "ref: refs/heads/main\n") -> Path:
    git = root / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text(head)
    return git


def test_loose_ref_found_from_a_subfolder(tmp_path: Path) -> None:
    git = _repo(tmp_path)
    (git / "refs" / "heads" / "main").write_text(SHA + "\n")
    (tmp_path / "pkg").mkdir()
    assert git_commit(tmp_path / "pkg") == SHA


def test_packed_ref_and_detached_head(tmp_path: Path) -> None:
    git = _repo(tmp_path)
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{SHA} refs/heads/main\n")
    assert git_commit(tmp_path) == SHA
    (git / "HEAD").write_text("f" * 40 + "\n")
    assert git_commit(tmp_path) == "f" * 40


def test_linked_worktree_reads_the_common_dir(tmp_path: Path) -> None:
    main = _repo(tmp_path / "main")
    (main / "refs" / "heads" / "feature").write_text(SHA + "\n")
    worktree_git = main / "worktrees" / "wt"
    worktree_git.mkdir(parents=True)
    (worktree_git / "HEAD").write_text("ref: refs/heads/feature\n")
    (worktree_git / "commondir").write_text("../..\n")
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text(f"gitdir: {worktree_git}\n")
    assert git_commit(tmp_path / "wt") == SHA


def test_unknown_and_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _repo(tmp_path)  # a branch without a commit yet
    assert git_commit(tmp_path) is None
    monkeypatch.setenv(COMMIT_ENV, "abc123")
    assert git_commit(tmp_path) == "abc123"
