"""The files an image gets, built offline the way its Dockerfile copies them.

No Docker engine runs here, so this reproduces the part of a build that decides
what the app sees: the build context filtered by the Dockerfile's own
`.dockerignore` (BuildKit reads `<Dockerfile>.dockerignore` next to it), then
every `COPY` into the WORKDIR in order, then the `RUN` steps that change the app's
files: `pip install .` (the package as installed, package data included) and
`rm -rf <path>`. Other RUN steps (apt, the model download) do not touch the app's
files and are reported as skipped.

Result: <out>/workdir (the image's WORKDIR, /home/ray/app) and <out>/site (what
`pip install .` put into site-packages: the copy `import serve_app` finds when
the working directory is elsewhere).

.dockerignore semantics follow moby/patternmatcher (the matcher BuildKit uses):
patterns are cleaned paths relative to the context root, `**` matches any number
of path segments, `*` and `?` do not cross `/`, a `!` pattern re-includes, the
last matching pattern wins, and a pattern that matches a directory matches
everything below it.

CLI: python kuberay/scripts/image_files.py kuberay/images/Dockerfile.cpu OUT
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- .dockerignore
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern[i:i + 2] == "**":
                # "**/" = zero or more directories; a trailing "**" = anything.
                if pattern[i:i + 3] == "**/":
                    out += "(?:.*/)?"
                    i += 3
                    continue
                out += ".*"
                i += 2
                continue
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        else:
            out += re.escape(c)
        i += 1
    # A pattern matching a directory matches everything below it.
    return re.compile(f"^{out}(?:/.*)?$")


@dataclass
class DockerIgnore:
    rules: list[tuple[bool, re.Pattern[str]]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pat = posixpath.normpath(line[1:].strip() if negate else line).lstrip("/")
            rules.append((negate, _pattern_regex(pat)))
        return cls(rules)

    def excluded(self, rel: str) -> bool:
        result = False
        for negate, rx in self.rules:
            if rx.match(rel):
                result = not negate
        return result


def context_files(context: Path, ignore: DockerIgnore) -> list[str]:
    """Every file of the build context that the .dockerignore lets through."""
    files = []
    for dirpath, dirnames, filenames in os.walk(context):
        rel_dir = os.path.relpath(dirpath, context)
        rel_dir = "" if rel_dir == "." else rel_dir
        # Skip trees no re-include can reach into (fast: .venv, .git, models).
        dirnames[:] = [d for d in dirnames
                       if not (ignore.excluded(posixpath.join(rel_dir, d)) and not _may_reinclude(ignore, posixpath.join(rel_dir, d)))]
        for f in filenames:
            rel = posixpath.join(rel_dir, f)
            if not ignore.excluded(rel):
                files.append(rel)
    return sorted(files)


def _may_reinclude(ignore: DockerIgnore, rel_dir: str) -> bool:
    probe = rel_dir + "/x"
    return any(neg and (rx.match(probe) or rx.pattern.startswith("^" + re.escape(rel_dir))) for neg, rx in ignore.rules)


# --------------------------------------------------------------------------- Dockerfile
def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            if not buf:
                continue
            if stripped.startswith("#"):
                continue  # comment lines inside a continuation are dropped by BuildKit too
        buf += (" " if buf else "") + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


@dataclass
class Build:
    dockerfile: Path
    out: Path
    workdir_path: str = ""
    copied: list[str] = field(default_factory=list)
    skipped_runs: list[str] = field(default_factory=list)

    @property
    def workdir(self) -> Path:
        return self.out / "workdir"

    @property
    def site(self) -> Path:
        return self.out / "site"


def build(dockerfile: Path, out: Path, context: Path = REPO_ROOT, python: str = sys.executable) -> Build:
    """Reproduce the app-relevant part of `docker build -f dockerfile context` into `out`."""
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not ignore_file.is_file():
        ignore_file = context / ".dockerignore"
    ignore = DockerIgnore.parse(ignore_file.read_text()) if ignore_file.is_file() else DockerIgnore()
    files = context_files(context, ignore)
    result = Build(dockerfile, out)
    if out.exists():
        shutil.rmtree(out)
    result.workdir.mkdir(parents=True)
    workdir = "/"
    for instr, args in instructions(dockerfile):
        if instr == "WORKDIR":
            workdir = posixpath.join(workdir, args)
            result.workdir_path = workdir
        elif instr == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            *sources, dest = words
            for src in sources:
                result.copied += _copy(context, files, src.rstrip("/"), dest, workdir, result)
        elif instr == "RUN":
            _run(args, result, python, workdir)
    return result


def _target(workdir: str, dest: str, result: Build) -> Path:
    """Host path of an image path inside the WORKDIR (anything else is outside the app)."""
    path = posixpath.normpath(posixpath.join(workdir, dest))
    rel = posixpath.relpath(path, result.workdir_path or workdir)
    if rel.startswith(".."):
        raise ValueError(f"COPY to {path} lands outside the WORKDIR {result.workdir_path}")
    return result.workdir / rel


def _inside(workdir: str, dest: str, result: Build) -> bool:
    if not result.workdir_path:
        return False
    path = posixpath.normpath(posixpath.join(workdir, dest))
    return not posixpath.relpath(path, result.workdir_path).startswith("..")


def _copy(context: Path, files: list[str], src: str, dest: str, workdir: str, result: Build) -> list[str]:
    src = posixpath.normpath(src)
    if src in files:  # a single file
        target = _target(workdir, dest, result)
        if dest.endswith("/"):
            target = target / posixpath.basename(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(context / src, target)
        return [src]
    below = [f for f in files if f.startswith(src + "/")]
    if not below:
        raise FileNotFoundError(f"COPY {src}: not in the build context (or excluded by the .dockerignore)")
    for f in below:  # a directory: its contents go to dest
        target = _target(workdir, posixpath.join(dest, posixpath.relpath(f, src)), result)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(context / f, target)
    return below


def _run(args: str, result: Build, python: str, workdir: str) -> None:
    for cmd in re.split(r"&&|;", args):
        words = shlex.split(cmd, comments=True)
        if not words:
            continue
        if words[:2] == ["pip", "install"] and "." in words[2:]:
            # The package as pip installs it (package data included), no deps, offline.
            subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "--disable-pip-version-check", "--target", str(result.site), "."],
                           cwd=result.workdir, check=True, capture_output=True, text=True)
            # pip's build leaves build/ and *.egg-info next to the sources; the image keeps them
            # too but they play no part in imports.
        elif words[:2] == ["rm", "-rf"] and all(_inside(workdir, p, result) for p in words[2:]):
            for p in words[2:]:
                target = _target(workdir, p, result)
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        else:
            result.skipped_runs.append(" ".join(words))


def main(argv: list[str]) -> int:
    dockerfile, out = Path(argv[0]), Path(argv[1])
    b = build(dockerfile.resolve(), out.resolve())
    print(f"{dockerfile}: WORKDIR {b.workdir_path} -> {b.workdir}; site-packages -> {b.site}")
    print(f"  copied {len(b.copied)} files; RUN steps not reproduced: {b.skipped_runs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
