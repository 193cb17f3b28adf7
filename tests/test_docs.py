"""The docs site builds without a single warning, its pages' Python examples run, and the pages
that describe the repository (code layout, studies) name what is there."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.slow
def test_mkdocs_build_is_strict_clean(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert "WARNING" not in log, log
    api = (site / "api" / "normzoo" / "index.html").read_text()
    for anchor in (
        "registry.available",
        "registry.create",
        "interop.norm_layer",
        "convert.convert",
        "testtime.modes.stats_mode",
        "testtime.recompute.recompute_stats",
        "testtime.adapt.adapt",
        "layers.batch.BatchNorm",
    ):
        assert f'id="normzoo.{anchor}"' in api, f"normzoo.{anchor} missing from the API page"
    assert (site / "reports" / "study_shift" / "index.html").exists()
    assert (site / "config" / "index.html").exists()


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_python_examples_in_the_pages_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(python_blocks(page)):
        exec(compile(block, f"{page.name}[python block {i}]", "exec"), namespace)


def test_code_layout_names_every_package_and_top_level_module():
    tree = re.search(r"```\n(.*?)```", (DOCS / "layout.md").read_text(), flags=re.S).group(1)
    package = ROOT / "normzoo"
    entries = [p for p in package.iterdir() if p.name != "__pycache__" and p.name != "py.typed"]
    entries += [p for p in (package / "bench").iterdir() if p.is_dir() and p.name != "__pycache__"]
    missing = [str(p.relative_to(ROOT)) for p in entries if p.name not in tree]
    assert not missing, f"docs/layout.md does not name {missing}"
    for family in (package / "functional").glob("*.py"):
        if not family.name.startswith("_"):
            assert family.name in tree, f"docs/layout.md does not name functional/{family.name}"


def test_studies_page_links_every_committed_report():
    page = (DOCS / "studies.md").read_text()
    missing = [p.name for p in (ROOT / "reports").glob("*.md") if f"(reports/{p.name})" not in page]
    assert not missing, f"docs/studies.md does not link {missing}"


def test_readme_links_into_docs_point_at_pages():
    links = re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text())
    assert links, "the README links no docs page"
    # docs/config.md is generated from the config schema by its own script (a stand-in page
    # takes its place on the site until then)
    missing = [link for link in links if not (ROOT / link).exists() and link != "docs/config.md"]
    assert not missing, f"README links to missing docs pages: {missing}"


class _Config(dict):
    """mkdocs' config: keys readable as items and as attributes."""

    __getattr__ = dict.__getitem__


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hooks_add_a_config_stand_in_only_when_the_page_is_missing(tmp_path):
    pytest.importorskip("mkdocs")
    from mkdocs.structure.files import File, Files

    hooks = _hooks()
    plugins = types.SimpleNamespace(_current_plugin=None)
    config = _Config(site_dir=str(tmp_path), use_directory_urls=True, plugins=plugins)
    files = hooks.on_files(Files([]), config)
    stand_in = files.get_file_from_path("config.md")
    assert stand_in is not None and "Config reference" in stand_in.content_string
    assert files.get_file_from_path("reports/study_shift.md") is not None
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "config.md").write_text("# generated\n")
    real = File("config.md", str(tmp_path / "docs"), str(tmp_path), True)
    files = hooks.on_files(Files([real]), config)
    assert files.get_file_from_path("config.md") is real


def test_hooks_strip_sphinx_roles_but_keep_the_code():
    html = "use :func:<code>create</code> or :class:<code>~normzoo.layers.BatchNorm</code>"
    assert _hooks().on_page_content(html, None, None, None) == (
        "use <code>create</code> or <code>normzoo.layers.BatchNorm</code>"
    )
