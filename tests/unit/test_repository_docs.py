"""The repository documents itself: no tracked file refers to a document outside the repository,
and every relative link of the documentation points to a file (and heading) that exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What a reference to a document outside the repository looks like: a path into a sibling folder
# of the checkout, or the name of an outside contract and its sections. Spelled in pieces so that
# this file does not match itself.
OUTSIDE = ("..", "/shared"), ("SPEC", ".md"), ("SPEC", " §")
OUTSIDE_PATTERNS = tuple("".join(parts) for parts in OUTSIDE)
GENERATED = "nexus_grpc/_gen/"

# The hand-written documentation whose links are checked.
DOCS = ("README.md", "CHANGELOG.md", "protos/README.md", "docs/*.md")

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def tracked_files() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the tracked files cannot be listed")
    done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"not a git checkout: {done.stderr.decode(errors='replace').strip()}")
    return [name for name in done.stdout.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file as text, or None for a binary file (a NUL byte, or not UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError:  # listed by git but absent from the work tree (e.g. deleted, not committed)
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_tracked_file_refers_outside_the_repository() -> None:
    offenders: list[str] = []
    for name in tracked_files():
        if name.startswith(GENERATED):
            continue
        text = text_of(ROOT / name)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            found = [p for p in OUTSIDE_PATTERNS if p in line]
            if found:
                offenders.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not offenders, (
        "files that refer to documents outside the repository (say it in the repository's own "
        "words, or link a file inside it):\n" + "\n".join(offenders)
    )


def doc_files() -> list[Path]:
    files: list[Path] = []
    for pattern in DOCS:
        files += sorted(ROOT.glob(pattern))
    return files


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with code spans blanked out."""
    lines: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, CODE_SPAN.sub("code", line)))
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = HEADING.match(line) if not fenced else None
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    return frozenset(found)


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of `doc` that leaves `root`, names no file, or names a heading that
    the target Markdown file does not have."""
    problems: list[str] = []
    where = doc.relative_to(root)
    for number, line in prose_lines(doc.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if SCHEME.match(target):
                continue  # http:, https:, mailto: ... are not files of the repository
            path_part, _, fragment = target.partition("#")
            resolved = (doc.parent / path_part).resolve() if path_part else doc
            if not resolved.is_relative_to(root.resolve()):
                problems.append(f"{where}:{number}: {target} points outside the repository")
            elif not resolved.exists():
                problems.append(f"{where}:{number}: {target}: no such file")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                problems.append(f"{where}:{number}: {target}: no heading #{fragment} there")
    return problems


def test_the_documentation_is_there() -> None:
    names = {str(p.relative_to(ROOT)) for p in doc_files()}
    expected = {"README.md", "docs/README.md", "docs/decisions.md", "docs/api.md", "docs/operations.md"}
    expected |= {"docs/envoy.md", "docs/security.md", "docs/configuration.md", "protos/README.md"}
    assert expected <= names


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_that_exists(doc: Path) -> None:
    problems = broken_links(doc)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_check_finds_broken_links(tmp_path: Path) -> None:
    """The checker itself: a missing file, a link out of the repository and a missing heading are
    found; links to existing files and headings, to web pages, in code spans and in fenced code
    are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("## Several processes: `--workers`\n", encoding="utf-8")
    sample = tmp_path / "docs" / "sample.md"
    sample.write_text(
        "# Title `x`\n\n"
        "[a](missing.md) [b](../../outside.md) [c](#nope) [d](other.md#nope)\n"
        "[e](#title-x) [f](other.md#several-processes---workers) [g](https://example.com/x) [h](other.md)\n"
        "`[i](in-code.md)`\n```\n[j](fenced.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(sample, root=tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md: no such file",
        "../../outside.md points outside the repository",
        "#nope: no heading #nope there",
        "other.md#nope: no heading #nope there",
    ]
