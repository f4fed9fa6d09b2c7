"""Print the requirements of this project's core plus the given extras, one per line, from pyproject.toml.

Why: images install the dependencies in their own layer *before* copying the code, so a code change does
not reinstall torch or FastAPI. pip cannot install "only the dependencies of ." by itself; this reads them
(expanding self-references such as ``diffbir-service[model]``) with the standard library alone.

    python pyproject_requirements.py api > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    name = re.sub(r"[-_.]+", "-", project["name"]).lower()
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml has {sorted(optional)}")
        seen.add(extra)
        for req in optional[extra]:
            match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*\[([^\]]+)\]\s*$", req)
            if match and re.sub(r"[-_.]+", "-", match.group(1)).lower() == name:
                todo += [e.strip() for e in match.group(2).split(",")]
            else:
                out.append(req)
    return list(dict.fromkeys(out))


if __name__ == "__main__":
    here = Path.cwd() / "pyproject.toml"
    print("\n".join(requirements(here, sys.argv[1:])))
