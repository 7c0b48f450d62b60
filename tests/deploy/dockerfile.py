"""Just enough of Dockerfile and ``.dockerignore`` semantics to re-enact a build without Docker.

No Docker engine runs where the tests do, so the equivalence test reads the Dockerfile's
own instructions (what it copies, what it installs, its environment, its command) and
repeats them in a temporary directory; this module parses them.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def words(self) -> list[str]:
        """The arguments of the exec (JSON) form, or the shell form split like a shell."""
        if self.args.startswith("["):
            words: list[str] = json.loads(self.args)
            return words
        return shlex.split(self.args)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """``ENV`` values in the ``KEY=value`` form (the one the Dockerfile uses)."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for word in shlex.split(ins.args):
                key, _, value = word.partition("=")
                out[key] = value
        return out


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ``ARG`` defaults and the stages, with line continuations and comments resolved."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif keyword == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, rest))
    return args, stages


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(dockerignore: Path) -> list[tuple[re.Pattern[str], bool]]:
    """Patterns in order, each with whether it re-includes (``!``)."""
    rules: list[tuple[re.Pattern[str], bool]] = []
    for raw in dockerignore.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((_pattern_regex(pattern), negate))
    return rules


def is_excluded(rel: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for regex, negate in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def build_context(repo: Path, dest: Path) -> Path:
    """Copy what ``docker build`` would send from ``repo`` (honouring ``.dockerignore``)."""
    rules = dockerignore_excludes(repo / ".dockerignore")
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if rel.startswith((".git/", ".venv/")) or rel in (".git", ".venv"):
            continue
        if path.is_file() and not is_excluded(rel, rules):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def apply_copy(ins: Instruction, context: Path, root: Path, workdir: str) -> None:
    """Re-enact ``COPY src... dest`` from the build context into a directory standing for ``/``."""
    words = [w for w in ins.words() if not w.startswith("--")]
    *sources, dest = words
    base = root / (dest.lstrip("/") if dest.startswith("/") else f"{workdir}/{dest}".lstrip("/"))
    for src in sources:
        path = context / src
        if path.is_dir():
            shutil.copytree(path, base, dirs_exist_ok=True)  # a directory's contents
        else:
            target = base / path.name if dest.endswith("/") or len(sources) > 1 else base
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
