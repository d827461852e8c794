"""The docs run: every Python block of docs/*.md and of the README is executed, every `autosub …` command in docs and the README
parses, the error catalogue matches what the code raises, and the site (user guide + API reference) builds offline.

A page's Python blocks run in order in one namespace, in a scratch directory (as a reader would paste them). A block
preceded by ``<!-- doctest: skip REASON -->`` is skipped with that reason; ``<!-- doctest: needs MOD … -->`` skips it
when a module is missing (an optional extra).
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md"))
BLOCK = re.compile(r"(?:<!--\s*doctest:\s*(?P<directive>[^>]*?)\s*-->\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)\n```",
                   re.S)


def blocks(page: Path, lang: str) -> list[tuple[str, str]]:
    """``(directive, code)`` of every ``lang`` block of a page, in order."""
    return [(m["directive"] or "", m["code"]) for m in BLOCK.finditer(page.read_text()) if m["lang"] == lang]


def commands(text_blocks: list[str]) -> list[str]:
    """Every `autosub …` command line in shell blocks (comments stripped, continuation lines joined)."""
    out = []
    for code in text_blocks:
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"&&|;", line):
                part = part.strip()
                if part.startswith(("autosub ", ".venv/bin/autosub ")):
                    out.append(part.split("autosub", 1)[1].strip())
    return out


@pytest.mark.parametrize("page", [p for p in [*PAGES, ROOT / "README.md"] if blocks(p, "python")],
                         ids=lambda p: p.name)
def test_python_blocks_of_the_page_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    ran, skipped = 0, []
    for i, (directive, code) in enumerate(blocks(page, "python")):
        if directive.startswith("skip"):
            skipped.append(directive.removeprefix("skip").strip())
            continue
        if directive.startswith("needs"):
            missing = [m for m in directive.split()[1:] if importlib.util.find_spec(m) is None]
            if missing:
                skipped.append(f"needs {missing}")
                continue
        exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        ran += 1
    if not ran:
        pytest.skip(f"{page.name}: every Python block is marked: {'; '.join(sorted(set(skipped)))}")


def test_skipped_blocks_say_why():
    for page in [*PAGES, ROOT / "README.md"]:
        for directive, _ in blocks(page, "python"):
            if directive.startswith("skip"):
                assert len(directive.split()) > 3, f"{page.name}: a skip needs a reason: {directive!r}"


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md"], ids=lambda p: p.name)
def test_autosub_commands_in_docs_parse(page):
    from autosub.cli.main import build_parser

    parser = build_parser()
    found = commands([code for _, code in blocks(page, "bash")])
    for cmd in found:
        argv = [a for a in shlex.split(cmd)]
        if argv[-1:] == ["--help"] or "COMMAND" in argv:
            continue
        args = parser.parse_args(argv)  # argparse exits (a test error) on an unknown flag or a bad value
        assert args.command == argv[0]


def test_docs_site_builds_offline(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install 'autosub[docs]'")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed: pip install 'autosub[docs]'")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (site / "api" / "index.html").read_text()
    assert "Search which blocks of" in api and "SearchResult" in api  # docstrings made it into the reference
    assert (site / "errors" / "index.html").is_file() and (site / "cli" / "index.html").is_file()
