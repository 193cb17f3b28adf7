"""mkdocs hooks (mkdocs.yml `hooks:`): the committed reports/ become pages of the site, and
docs/config.md, generated from the config schema by its own script, gets a stand-in page while
it does not exist, so the nav and the links to it build without warnings either way."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
# Sphinx roles in docstrings (:func:`x`, :class:`~a.B`), which help() and IDEs show as they are,
# rendered as plain code on the site: the role and the "~" go, the code stays.
SPHINX_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|obj|exc):<code>~?")
REPORT_SUFFIXES = (".md", ".png", ".csv")

CONFIG_STAND_IN = """# Config reference

The reference of every config key (type, default, meaning) is generated from the config
schema into `docs/config.md`; it has not been generated in this checkout. Until it is, the
shipped presets in `normzoo/configs/` show the keys in use, and `normzoo compare CONFIG
--dry-run` validates a config and lists every problem at once.
"""


def on_page_content(html: str, page, config, files) -> str:
    """Drop the Sphinx role prefixes mkdocstrings leaves in rendered docstrings."""
    return SPHINX_ROLE.sub("<code>", html)


def on_files(files: Files, config) -> Files:
    """Add reports/**/{*.md,*.png,*.csv} under reports/, and a stand-in config.md if needed."""
    for path in sorted((ROOT / "reports").rglob("*")):
        if path.is_file() and path.suffix in REPORT_SUFFIXES:
            files.append(
                File(
                    str(path.relative_to(ROOT)),
                    src_dir=str(ROOT),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    if files.get_file_from_path("config.md") is None:
        files.append(File.generated(config, "config.md", content=CONFIG_STAND_IN))
    return files
