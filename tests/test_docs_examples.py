"""The code blocks of the README and of the docs pages that are marked runnable run as written.

The convention (also in docs/contributing.md): the line right before a ```python fence is
exactly ``<!-- test: run -->``. The comment is invisible on GitHub and on the site. The
runnable blocks of one page run in order in one namespace, so a later block may use what an
earlier one made; unmarked blocks (signatures with placeholders, commands, anything that
needs Ray, a GPU, a network or files the repository does not have) are never run. Runnable
blocks use the tiny built-in models, so every page takes seconds.
"""

from __future__ import annotations

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKER = "<!-- test: run -->"
README_MAX_LINES = 200  # issue 27: a README read in five minutes


def doc_pages() -> list[pathlib.Path]:
    """The docs pages written for the site (docs/results links to bench/results: skipped)."""
    pages = []
    for folder, _dirs, files in os.walk(DOCS):  # os.walk does not follow the symlink
        pages += [pathlib.Path(folder, f) for f in files if f.endswith(".md")]
    return sorted(pages)


def runnable_blocks(page: pathlib.Path) -> list[tuple[int, str]]:
    """(first line number, source) of every marked block; a misplaced or misspelled marker
    is an error naming the page and line, so a block cannot silently stop being run.
    Markers inside other fenced blocks (a page showing the convention) are text, not markers."""
    lines = page.read_text().splitlines()
    blocks, fence = [], None
    for i, line in enumerate(lines):
        stripped = line.strip()
        opening = re.match(r"(`{3,}|~{3,})", stripped)
        if fence is not None:  # inside a fenced block: only its closing fence matters
            if opening and stripped == opening.group(1) and opening.group(1)[0] == fence[0] \
                    and len(opening.group(1)) >= len(fence):
                fence = None
            continue
        if opening:
            fence = opening.group(1)
            continue
        if re.match(r"<!--\s*test\b", stripped) and stripped != MARKER:
            raise ValueError(f"{page}:{i + 1}: write the marker exactly as {MARKER!r}, got {stripped!r}")
        if stripped != MARKER:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```python":
            raise ValueError(f"{page}:{i + 1}: {MARKER} must be followed directly by a ```python line")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{page}:{i + 2}: the runnable block is never closed")
        blocks.append((i + 3, "\n".join(lines[i + 2:end]) + "\n"))
    return blocks


def run_page(page: pathlib.Path) -> dict:
    """Run the page's marked blocks in order in one namespace and return it. Each block is
    compiled at its own line of the page, so a traceback points into the Markdown file."""
    scope: dict = {"__name__": f"docs_example_{page.stem}"}
    for first_line, source in runnable_blocks(page):
        exec(compile("\n" * (first_line - 1) + source, str(page), "exec"), scope)
    return scope


def test_markers_are_well_formed():
    counts = {page.relative_to(ROOT).as_posix(): len(runnable_blocks(page))
              for page in [README, *doc_pages()]}
    # The pages whose examples must keep running: a marker edited away fails here.
    for name in ("README.md", "docs/getting-started.md", "docs/model-api.md", "docs/ops-backends.md"):
        assert counts.get(name, 0) >= 1, f"{name} has no runnable block ({MARKER})"


def has_blocks(page: pathlib.Path) -> bool:
    """For collection: a page with a bad marker is collected too, so that its test fails
    with the marker's error (instead of the whole module failing to collect)."""
    try:
        return bool(runnable_blocks(page))
    except ValueError:
        return True


@pytest.mark.parametrize("page", [p for p in doc_pages() if has_blocks(p)],
                         ids=lambda p: p.relative_to(DOCS).as_posix())
def test_docs_page_blocks_run(page):
    run_page(page)


def test_readme_quick_example_runs():
    text = README.read_text()
    section = re.search(r"^## Quick example\n(.*?)(?=^## )", text, re.S | re.M)
    assert section and MARKER + "\n```python\n" in section.group(1), \
        "README's '## Quick example' must hold a runnable python block"
    scope = run_page(README)
    assert tuple(scope["out"].scores.shape) == (2, 201)
    assert tuple(scope["out"].gates.shape) == (2, 2, 4)
    scores, items = scope["scores"], scope["items"]
    assert scores.shape == items.shape == (2, 10)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    for row, history in zip(items.tolist(), [[3, 17, 42], [8, 9]]):
        assert not set(row) & set(history) and 0 not in row


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md is over {README_MAX_LINES} lines"
    # Relative links and images: the site build checks the docs pages, this the README.
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets, "README.md has no links"
    missing = [t for t in targets if "://" not in t and not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_a_misplaced_marker_is_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"{MARKER}\n\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="followed directly"):
        runnable_blocks(page)
    page.write_text("<!-- test:run -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="exactly"):
        runnable_blocks(page)
    page.write_text(f"{MARKER}\n```python\nx = 1\ny = x + 1\n```\n")
    assert run_page(page)["y"] == 2
    # Shown inside a longer fence, the convention is text: nothing runs.
    page.write_text(f"````markdown\n{MARKER}\n```python\nraise AssertionError\n```\n````\n")
    assert runnable_blocks(page) == []
