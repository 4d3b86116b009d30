"""Temporary names of writers: unique per process and host, matched by the build's clean-up."""

from __future__ import annotations

import fnmatch
import os
import socket
from pathlib import Path

import pytest

from aem_synth.paths import temp_sibling


def test_temp_sibling_names_pid_and_host_and_is_cleaned_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "synthetic" / "aem-00003.h5"
    tmp = temp_sibling(target)
    assert tmp.parent == target.parent and tmp.name.startswith(".aem-00003.h5.tmp-")
    assert f"-{os.getpid()}-" in tmp.name
    assert fnmatch.fnmatch(tmp.name, ".*.tmp-*")  # what a build's clean-up removes
    # Same pid on another host (e.g. another container): another name.
    monkeypatch.setattr(socket, "gethostname", lambda: "node-7.cluster/a b")
    other = temp_sibling(target)
    assert other != tmp and other.name.endswith("-node-7_cluster_a_b")
    assert "/" not in other.name
