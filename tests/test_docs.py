"""The documentation: the built site is self-contained (it loads nothing from another host, so it
works offline), its diagrams are rendered, its samples match what the commands print, and it
cites the protocol page's sections by name."""

from __future__ import annotations

import html.parser
import importlib.util
import os
import re
import subprocess
import sys
import xml.dom.minidom
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NEEDS_DOCS = "needs the 'docs' extra (mkdocs): pip install -e '.[docs]'"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}

#: Markdown the site is made of: its pages and what they include (pymdownx.snippets).
MARKDOWN = [
    *sorted(DOCS.rglob("*.md")),
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "benchmarks" / "README.md",
    ROOT / "examples" / "file_transfer" / "README.md",
]


def _diagrams_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_diagrams", DOCS / "hooks" / "diagrams.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the built site --------------------------------------------------------------------------


class _Resources(html.parser.HTMLParser):
    """Every URL a page makes the browser load (not the links a reader may follow), and the
    classes of its elements."""

    LOADING = {"src", "srcset", "href", "poster", "data", "action", "formaction", "content"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.classes: set[str] = set()
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "class":
                self.classes.update(value.split())
            elif name == "style":
                self.urls += _css_urls(value)
            elif name in self.LOADING and not (tag == "a" and name == "href"):
                if name == "content" and tag != "meta":
                    continue
                self.urls += [part.split()[0] for part in value.split(",") if part.strip()]
        self._in_style = tag == "style"

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += _css_urls(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False


def _css_urls(css: str) -> list[str]:
    found = re.findall(r"url\(\s*['\"]?([^'\")\s]+)", css)
    found += re.findall(r"@import\s+['\"]([^'\"]+)", css)
    return found


def _external(url: str) -> bool:
    parts = urlsplit(url.strip())
    if parts.scheme in ("http", "https") or url.strip().startswith("//"):
        return (parts.hostname or "") not in LOCAL_HOSTS
    return False


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs", reason=NEEDS_DOCS)
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_built_site_is_self_contained(site: Path) -> None:
    """``mkdocs build --strict`` passes, and the site it builds loads nothing from another
    host (no Google Fonts, no mermaid.js from a CDN: offline, diagrams used to show as their
    source), publishes no hook, and shows every diagram as its SVG."""
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    loads: dict[str, list[str]] = {}
    classes: set[str] = set()
    for page in pages:
        parser = _Resources()
        parser.feed(page.read_text())
        classes |= parser.classes
        outside = [url for url in parser.urls if _external(url)]
        if outside:
            loads[str(page.relative_to(site))] = outside
    for asset in [*site.rglob("*.css"), *site.rglob("*.js"), *site.rglob("*.svg")]:
        text = asset.read_text(errors="replace")
        outside = [url for url in _css_urls(text) if _external(url)]
        outside += re.findall(r"""\b(?:src|href)\s*[=:]\s*["'`](https?://[^"'`]+)""", text)
        outside = [url for url in outside if _external(url)]
        if outside:
            loads[str(asset.relative_to(site))] = outside
    assert loads == {}
    # Material fetches mermaid.js from a CDN for any element of class "mermaid"
    assert "mermaid" not in classes
    assert not list(site.rglob("*.py")), "the docs' hooks are published"
    assert not (site / "hooks").exists()
    architecture = (site / "architecture" / "index.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="([^"]+\.svg)"', architecture)
    assert len(images) == 2, images
    for alt, src in images:
        assert (site / "architecture" / src).resolve().is_file(), src
        assert alt != "diagram"  # the alternative text the source gives
    # the Benchmarks page: the re-measured rows are a list, not a run-on paragraph
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    assert re.search(r"<li>\s*<strong><code>pool</code>\.</strong>", benchmarks)


# --- the sources -----------------------------------------------------------------------------


def test_every_diagram_has_its_rendered_svg() -> None:
    """Each Mermaid fence of the docs has its SVG (named by the source's hash: a diagram edited
    without ``python3 docs/hooks/diagrams.py`` fails here and fails the build), a standalone
    XML file that refers to no other host; no SVG is left over."""
    hook = _diagrams_hook()
    wanted = set()
    for page in sorted(DOCS.rglob("*.md")):
        for source in hook.diagrams(page.read_text()):
            name = f"{hook.digest(source)}.svg"
            wanted.add(name)
            svg = DOCS / "img" / "diagrams" / name
            assert svg.is_file(), f"{page.name}: run python3 docs/hooks/diagrams.py"
            xml.dom.minidom.parse(str(svg))  # well-formed: shown by an <img>
            text = svg.read_text()
            assert not [u for u in re.findall(r'href="([^"]+)"', text) if _external(u)]
            assert hook.ALT.search(source), f"{page.name}: a diagram without '%% alt: ...'"
    assert len(wanted) >= 3
    assert {p.name for p in (DOCS / "img" / "diagrams").glob("*.svg")} == wanted


def test_lists_start_after_a_blank_line() -> None:
    """Python-Markdown (unlike GitHub) needs a blank line before a list: without it the items
    run on inside the paragraph (the Benchmarks page showed its list as inline text)."""
    item = re.compile(r"^(?:[-*+]|\d+\.)\s+\S")
    glued = []
    for path in MARKDOWN:
        fenced = in_list = False
        previous = ""
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            if fenced:
                previous = line
                continue
            if item.match(line):
                if previous.strip() and not in_list and not previous.lstrip().startswith("<"):
                    glued.append(f"{path.relative_to(ROOT)}:{number}: {line[:60]}")
                in_list = True
            elif not line.strip():
                pass
            elif not line.startswith((" ", "\t")) and not previous.strip():
                in_list = False
            previous = line
    assert glued == []


def _doctor_lines(text: str) -> list[tuple[str, str]]:
    """``(status, label)`` of each check line of a doctor report."""
    lines = []
    for line in text.splitlines():
        match = re.match(r"^(ok|info|warn|fail)\s+(\S(?:.*?\S)?)\s{2,}\S", line)
        if match:
            lines.append((match.group(1), match.group(2)))
    return lines


def test_cli_page_doctor_sample_has_the_real_report_shape() -> None:
    """The ``doctor`` sample of the CLI page against a real ``python -m kwik doctor``: its
    lines before ``...`` are the report's first lines, those after it its last ones, with the
    same labels and statuses (values differ between machines, so they are not compared), and
    it ends with the verdict line."""
    page = (DOCS / "guide" / "cli.md").read_text()
    match = re.search(r"```sh\npython -m kwik doctor\n```\n\n```text\n(.*?)```", page, re.S)
    assert match, "no doctor sample in docs/guide/cli.md"
    sample = match.group(1)
    head, dots, tail = sample.partition("\n...\n")
    assert dots, "the sample elides the middle with a '...' line"
    real = subprocess.run(
        [sys.executable, "-m", "kwik", "doctor"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert real.returncode in (0, 1), real.stderr
    report = _doctor_lines(real.stdout)
    shown_head, shown_tail = _doctor_lines(head), _doctor_lines(tail)
    assert len(shown_head) >= 5 and shown_tail, sample
    assert len(head.strip().splitlines()) == len(shown_head), "a line the doctor does not print"

    def same(shown: list[tuple[str, str]], actual: list[tuple[str, str]]) -> None:
        assert [label for _, label in shown] == [label for _, label in actual]
        for (shown_status, label), (status, _) in zip(shown, actual, strict=True):
            # a warning depends on the machine (e.g. its UDP buffer limit)
            assert shown_status == status or "warn" in (shown_status, status), label

    same(shown_head, report[: len(shown_head)])
    same(shown_tail, report[-len(shown_tail) :])
    assert sample.rstrip().splitlines()[-1].startswith("verdict: ")
    assert real.stdout.rstrip().splitlines()[-1].startswith("verdict: ")


#: A section of a file outside the repository ("spec §3", "spec/wire-v2.md §1", ...).
FOREIGN_CITATION = re.compile(r"§|\bspec/[\w.-]+\.md")


def _protocol_sections() -> set[str]:
    headings = re.findall(r"^#+ (.+)$", (DOCS / "protocol.md").read_text(), re.M)
    return {heading.strip() for heading in headings}


def test_citations_name_sections_of_the_protocol_page() -> None:
    """The docs, tests, benchmarks and examples cite ``docs/protocol.md`` sections by name,
    never a numbered section of a spec file the repository does not have; every section cited
    by name (anywhere, kwik/ included) exists, and so does every ``protocol.md#anchor``."""
    foreign = []
    for tree in ("docs", "tests", "benchmarks", "examples"):
        for path in sorted((ROOT / tree).rglob("*")):
            if path.suffix not in (".py", ".md") or path == Path(__file__):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if FOREIGN_CITATION.search(line):
                    foreign.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    for name in ("README.md", "CHANGELOG.md"):
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            if FOREIGN_CITATION.search(line):
                foreign.append(f"{name}:{number}: {line.strip()[:80]}")
    assert foreign == []

    sections = _protocol_sections()
    anchors = {re.sub(r"[^\w\- ]", "", s.lower()).strip().replace(" ", "-") for s in sections}
    unknown = []
    for path in [*sorted(ROOT.glob("kwik/**/*.py")), *MARKDOWN]:
        text = path.read_text()
        for cited in re.findall(r'protocol\.md,? (?:section )?"([^"]+)"', text):
            if cited not in sections:
                unknown.append(f"{path.relative_to(ROOT)}: {cited!r}")
        for anchor in re.findall(r"protocol\.md#([\w-]+)", text):
            if anchor not in anchors:
                unknown.append(f"{path.relative_to(ROOT)}: #{anchor}")
    assert unknown == [], f"sections of docs/protocol.md: {sorted(sections)}"
