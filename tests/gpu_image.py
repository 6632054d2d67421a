"""The Python packages of the GPU machine's image, reproduced here by hiding every other one.

The lent H200 runs the project from a copy of the tree with only the distributions that
../shared/gpu-image/packages.txt lists (no registry, no network: nothing else can be installed
there). `hiding(folder)` writes into `folder` a sitecustomize.py that, in every Python process
whose PYTHONPATH holds `folder`, makes each installed distribution the image lacks absent the
way it is there: `import x` raises ModuleNotFoundError, importlib.util.find_spec("x") is None,
and importlib.metadata finds neither its version nor its entry points (so neither do pytest's
plugin loader nor anything else that asks). The project's own distribution counts as present.

Without the list (CI, a fresh clone: ../shared is not part of the repository) the distributions
known to be absent there are hidden: KNOWN_ABSENT. CI's `pip install -e ".[dev]"` installs
pyautoattack, so even then a test module that imports it unguarded breaks the dry run.

This file is both halves: the test process computes what to hide (`hiding`), and the copy
written as sitecustomize.py reads that back from hidden.json beside it and installs the hiding
(`_install`) before anything else is imported.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

PROJECT = "ratio-fast"  # the project's own distribution: present there as the copied tree
KNOWN_ABSENT = ("pyautoattack", "torchattacks", "nvidia-dali", "nvidia-dali-cuda*")  # GPU.md; normalized names
HIDDEN_JSON = "hidden.json"


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them: runs of -, _ and . are one -, case ignored."""
    return re.sub(r"[-_.]+", "-", name).lower()


def packages_list(root: Path) -> Path | None:
    """../shared/gpu-image/packages.txt beside the repository, if there is one. For a git worktree
    'the repository' is its main checkout (the parent of the common .git directory)."""
    checkouts = [root]
    try:
        common = subprocess.run(["git", "-C", str(root), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, timeout=30)
        if common.returncode == 0:
            checkouts.append(Path(common.stdout.strip()).parent)
    except OSError:  # no git: the tree alone decides
        pass
    for checkout in checkouts:
        path = checkout.parent / "shared" / "gpu-image" / "packages.txt"
        if path.is_file():
            return path
    return None


def image_distributions(path: Path) -> set[str]:
    """The normalized distribution names of packages.txt: one a line, '#' starts a comment."""
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {normalized(name) for name in names if name}


def absent_distributions(installed: set[str], image: set[str] | None) -> set[str]:
    """The installed distributions (normalized names) the image lacks: not in its list, or, without a
    list, the KNOWN_ABSENT ones. The project's own is never absent."""
    if image is None:
        absent = {name for name in installed if any(fnmatch(name, pattern) for pattern in KNOWN_ABSENT)}
    else:
        absent = installed - image
    return absent - {normalized(PROJECT)}


def hidden_modules(provides: dict[str, set[str]], absent: set[str]) -> set[str]:
    """The modules to hide, given what each distribution provides (normalized name -> its top-level
    modules and, for packages, their direct submodules, dotted). A top-level name all of whose
    distributions are absent is hidden whole; one that present distributions share (a namespace
    such as `nvidia`) stays, and only the submodules that absent distributions alone provide go."""
    owners: dict[str, set[str]] = {}
    for dist, modules in provides.items():
        for module in modules:
            owners.setdefault(module, set()).add(dist)
    hidden = set()
    for module, dists in owners.items():
        parent = module.rpartition(".")[0]
        if dists <= absent and (not parent or not owners[parent] <= absent):
            hidden.add(module)
    return hidden


def _module_names(dist) -> set[str]:
    """The top-level modules a distribution provides (importlib.metadata's top_level.txt or, without
    it, its files) and the direct submodules of its top-level packages, from its files."""
    names = set((dist.read_text("top_level.txt") or "").split())
    for file in dist.files or ():
        parts = file.parts
        if parts[0] in ("..", "__pycache__") or not parts[-1].endswith((".py", ".so", ".pyd")):
            continue
        stems = [*parts[:-1], parts[-1].split(".")[0]]
        if stems[-1] == "__init__":
            stems.pop()
        stems = stems[:2]
        if stems and all(stem.isidentifier() for stem in stems):
            names.update(".".join(stems[:depth]) for depth in range(1, len(stems) + 1))
    return names


def hiding(folder: Path, listing: Path | None) -> dict:
    """Write sitecustomize.py and hidden.json into `folder`: what a process with `folder` on its
    PYTHONPATH does not find, given the image's packages.txt (`listing`; None: KNOWN_ABSENT).
    Returns hidden.json's content: the list used, the hidden distributions and modules."""
    from importlib.metadata import distributions

    installed = {}
    for dist in distributions():
        name = dist.metadata.get("Name")
        if name and normalized(name) not in installed:  # the first on sys.path wins, as for imports
            installed[normalized(name)] = dist
    absent = absent_distributions(set(installed), image_distributions(listing) if listing else None)
    provides = {name: _module_names(dist) for name, dist in installed.items()}
    content = {"packages_txt": str(listing) if listing else None, "distributions": sorted(absent),
               "modules": sorted(hidden_modules(provides, absent))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HIDDEN_JSON).write_text(json.dumps(content, indent=1))
    (folder / "sitecustomize.py").write_text(Path(__file__).read_text())
    return content


# ---- in the hiding process, as sitecustomize.py -------------------------------------------------

def _is_hidden(module: str, hidden: frozenset[str]) -> bool:
    """Whether `module` is hidden: it or a package above it is."""
    parts = module.split(".")
    return any(".".join(parts[:depth]) in hidden for depth in range(1, len(parts) + 1))


class _Hiding:
    """Wraps one finder of sys.meta_path: hidden modules are not found, hidden distributions not listed."""

    def __init__(self, finder, modules: frozenset[str], distributions: frozenset[str]):
        self._finder, self._modules, self._distributions = finder, modules, distributions

    def find_spec(self, name, path=None, target=None):
        if _is_hidden(name, self._modules) or not hasattr(self._finder, "find_spec"):
            return None
        return self._finder.find_spec(name, path, target)

    def find_distributions(self, *args, **kwargs):
        find = getattr(self._finder, "find_distributions", None)
        if find is None:
            return iter(())
        return (dist for dist in find(*args, **kwargs)
                if normalized(dist.metadata.get("Name") or "") not in self._distributions)

    def invalidate_caches(self):
        if hasattr(self._finder, "invalidate_caches"):
            self._finder.invalidate_caches()

    def __getattr__(self, name):  # anything else a caller asks the finder
        return getattr(self._finder, name)


def _install(folder: Path) -> None:
    hidden = json.loads((folder / HIDDEN_JSON).read_text())
    modules, dists = frozenset(hidden["modules"]), frozenset(hidden["distributions"])
    sys.meta_path[:] = [_Hiding(finder, modules, dists) for finder in sys.meta_path]
    for name in [name for name in sys.modules if _is_hidden(name, modules)]:  # imported by a .pth file
        del sys.modules[name]


if __name__ == "sitecustomize":
    _install(Path(__file__).resolve().parent)
