"""The shape of the package: every module says what it models, stays a readable size and is on
the README's module map; the public API resolves; the views load no engine."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tender_ray

PACKAGE = Path(tender_ray.__file__).resolve().parent
README = PACKAGE.parent / "README.md"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "_stub" not in p.parts)
MAX_LINES = 650  # "about 600": a module past this is several rooms in one


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_every_module_says_what_it_models(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring and len(docstring.split()) >= 5, f"{_name(path)} has no docstring"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_is_several_rooms_in_one(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{_name(path)} has {lines} lines"


def test_the_readme_maps_every_module() -> None:
    text = README.read_text()
    start = text.index("## Module map")
    end = text.find("\n## ", start + 1)
    mapped = set(re.findall(r"`([\w/]+\.py)`", text[start:end if end > 0 else None]))
    folders = {m.rpartition("/")[0] for m in mapped}

    def on_map(name: str) -> bool:
        # A layer's __init__ is the layer itself: mapped when its folder's modules are.
        folder, _, leaf = name.rpartition("/")
        return name in mapped or (leaf == "__init__.py" and folder in folders)

    missing = [_name(p) for p in MODULES if not on_map(_name(p))]
    assert missing == [], f"README's module map does not name {missing}"
    stale = sorted(m for m in mapped if not (PACKAGE / m).is_file())
    assert stale == [], f"README's module map names modules that do not exist: {stale}"


def test_every_public_name_resolves() -> None:
    for name in tender_ray.__all__:
        assert getattr(tender_ray, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = tender_ray.nothing_here  # type: ignore[attr-defined]


@pytest.mark.parametrize("module", ["tender_ray.cli.top", "tender_ray.metrics.collector",
                                    "tender_ray.balancing.loop", "tender_ray.kernel.machine",
                                    "tender_ray"])
def test_views_and_policies_load_no_engine(module: str) -> None:
    code = (f"import sys, {module}; "
            "bad = [m for m in ('unicorn', 'tender_ray.engines.emulated', "
            "'tender_ray.engines.native') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, f"importing {module} loads {result.stdout}{result.stderr}"


def test_test_modules_have_names_of_their_own() -> None:
    """pytest imports test modules by basename (the suites have no __init__.py), so one name in
    both tests/unit and tests/integration stops the whole run at collection."""
    tests = PACKAGE.parent / "tests"
    names = [p.name for d in ("unit", "integration") for p in (tests / d).glob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
