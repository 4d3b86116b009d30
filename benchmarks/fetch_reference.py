"""Copy the public reference RFNet's model and loss code into an ignored folder.

``benchmarks/bench_gpu.py --reference .reference/rfnet`` times the published
training step of RFNet (Ding et al., ICCV 2021; github.com/dyh127/RFNet) next to
ours.  Its code is not part of this repository and is never committed: this
script copies the three files the step needs, unchanged, from a git snapshot of
that repository into ``.reference/rfnet/`` (ignored by ``.gitignore``):

``models.py``               ``Model`` (encoders, shared decoder, fusion decoder)
``layers.py``               the layers ``models.py`` imports
``utils/criterions.py``     ``softmax_weighted_loss`` and ``dice_loss`` of its ``train.py``

and writes ``SOURCE.txt`` (repository, commit, file sizes and SHA-256).  The
snapshot is any clone or bare mirror of the repository, e.g.
``git clone https://github.com/dyh127/RFNet /tmp/RFNet``; nothing is downloaded here.

Run: ``python benchmarks/fetch_reference.py --mirror PATH [--rev HEAD] [--dest .reference/rfnet]``
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/dyh127/RFNet"
FILES = ("models.py", "layers.py", "utils/criterions.py")


def git_dir(mirror: Path) -> Path:
    """The git directory of a clone (``mirror/.git``) or of a bare mirror (``mirror``)."""
    if (mirror / ".git").exists():
        return mirror / ".git"
    if (mirror / "HEAD").is_file() and (mirror / "objects").is_dir():
        return mirror
    raise SystemExit(
        f"error: {mirror} is not a git clone or mirror of {REPOSITORY} (no .git, no HEAD + "
        f"objects/); clone it first, e.g. `git clone {REPOSITORY} /tmp/RFNet`, and pass "
        "--mirror /tmp/RFNet"
    )


def _git(gdir: Path, *args: str) -> bytes:
    res = subprocess.run(["git", f"--git-dir={gdir}", *args], capture_output=True, check=False)
    if res.returncode:
        msg = res.stderr.decode(errors="replace").strip()
        raise SystemExit(f"error: git {' '.join(args)} in {gdir}: {msg}")
    return res.stdout


def fetch(mirror: Path, dest: Path, rev: str = "HEAD") -> list[str]:
    """Copy :data:`FILES` at ``rev`` of ``mirror`` into ``dest``; returns the SOURCE.txt lines."""
    if not mirror.exists():
        raise SystemExit(
            f"error: mirror {mirror} does not exist; clone {REPOSITORY} (or fetch a snapshot) "
            "and pass its path with --mirror"
        )
    gdir = git_dir(mirror)
    commit = _git(gdir, "rev-parse", f"{rev}^{{commit}}").decode().strip()
    lines = [f"repository {REPOSITORY}", f"commit {commit}", f"mirror {mirror}"]
    for name in FILES:
        data = _git(gdir, "show", f"{commit}:{name}")
        out = dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        lines.append(f"{name} {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()}")
    (dest / "SOURCE.txt").write_text("\n".join(lines) + "\n")
    return lines


def check_ignored(dest: Path) -> None:
    """Stop when ``dest`` is inside this repository but not ignored by git (it must never be committed)."""
    try:
        rel = dest.resolve().relative_to(ROOT)
    except ValueError:
        return  # outside the repository
    res = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", f"{rel}/models.py"], check=False
    )
    if res.returncode != 0:
        raise SystemExit(
            f"error: {rel}/ is not ignored by git; the reference code must stay out of the "
            "repository (add it to .gitignore, as /.reference/ is)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", type=Path, required=True, help="clone or bare mirror of RFNet")
    ap.add_argument("--rev", default="HEAD", help="revision to copy (default HEAD)")
    ap.add_argument("--dest", type=Path, default=ROOT / ".reference" / "rfnet")
    args = ap.parse_args()
    check_ignored(args.dest)
    for line in fetch(args.mirror, args.dest, args.rev):
        print(line)
    print(f"copied {len(FILES)} files to {args.dest}")


if __name__ == "__main__":
    main()
