"""mkdocs hook: serve the committed figures of ``experiments/results`` with the site.

The pages link them as ``experiments/results/NAME.png``, the same path the README
uses, so one figure file serves both.
"""

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add every PNG of ``experiments/results`` to the site's files."""
    root = Path(config["docs_dir"]).resolve().parent
    for png in sorted((root / "experiments" / "results").glob("*.png")):
        files.append(
            File(
                png.relative_to(root).as_posix(),
                src_dir=str(root),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
