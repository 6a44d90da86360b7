"""mkdocs hook: the docs' Mermaid diagrams, shown as SVG rendered beforehand, so that the site
loads no script from the internet (Material would fetch mermaid.js from a CDN, and offline a
reader would see the diagram's source).

The markdown keeps each diagram's source in a ```` ```mermaid ```` fence (GitHub draws those
itself). This hook replaces every fence with the SVG rendered from that very source, found in
``docs/img/diagrams/`` by the source's SHA-256. A diagram edited and not rendered again fails
the build, naming the command that renders it::

    python3 docs/hooks/diagrams.py         # render what is missing, delete what is unused

which needs ``chromium`` (Debian's package) and npm (it fetches the ``mermaid`` package). A
first comment line ``%% alt: ...`` in a diagram is the image's alternative text.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
SVG_DIR = DOCS / "img" / "diagrams"
FENCE = re.compile(r"^```mermaid\n(.*?)^```[ \t]*$", re.S | re.M)
ALT = re.compile(r"^%%\s*alt:\s*(.+)$", re.M)
MERMAID = "mermaid@11"  # the npm package the SVGs are rendered with
RENDER_COMMAND = "python3 docs/hooks/diagrams.py"


def digest(source: str) -> str:
    """The name of the SVG of ``source`` (a diagram's text, as the fence holds it)."""
    return hashlib.sha256(source.strip().encode()).hexdigest()[:16]


def diagrams(markdown: str) -> list[str]:
    """The sources of the Mermaid fences in ``markdown``."""
    return [match.group(1) for match in FENCE.finditer(markdown)]


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Every Mermaid fence of ``page`` becomes an image of its pre-rendered SVG."""
    from mkdocs.exceptions import PluginError

    here = posixpath.dirname(page.file.src_uri)

    def image(match: re.Match[str]) -> str:
        source = match.group(1)
        name = f"{digest(source)}.svg"
        if not (SVG_DIR / name).is_file():
            raise PluginError(
                f"{page.file.src_uri}: a Mermaid diagram has no rendered SVG "
                f"(docs/img/diagrams/{name}); run: {RENDER_COMMAND}"
            )
        alt = ALT.search(source)
        text = alt.group(1).strip() if alt else "diagram"
        target = posixpath.relpath(f"img/diagrams/{name}", here or ".")
        text = text.replace("[", "(").replace("]", ")")
        # Markdown, not HTML: mkdocs makes the paths of Markdown images and links relative to
        # each built page; the link opens the diagram alone, full size
        return f"[![{text}]({target})]({target}){{ .kwik-diagram }}\n"

    return FENCE.sub(image, markdown)


# --- rendering (a command for whoever edits a diagram, not part of the build) -----------------

PAGE = r"""<!doctype html>
<meta charset="utf-8">
<body>
<script src="mermaid.min.js"></script>
<script>
const sources = SOURCES;
mermaid.initialize({
  startOnLoad: false, theme: "default", securityLevel: "strict",
  htmlLabels: false, flowchart: {htmlLabels: false, wrappingWidth: 320},
});
(async () => {
  for (const [name, source] of Object.entries(sources)) {
    const {svg} = await mermaid.render("d" + name, source);
    // mermaid's markup is HTML (labels may hold <br>): parsed as such, written out as XML, a
    // standalone SVG file, on a white ground (it shows on Material's dark scheme too)
    const root = new DOMParser().parseFromString(svg, "text/html").querySelector("svg");
    root.style.backgroundColor = "#ffffff";
    // its own size (mermaid's is width="100%"), so that an <img> shows it at that size at most
    const [, , width, height] = root.getAttribute("viewBox").split(/\s+/).map(Number);
    root.setAttribute("width", Math.ceil(width));
    root.setAttribute("height", Math.ceil(height));
    root.style.removeProperty("max-width");
    const out = document.createElement("pre");
    out.id = name;
    out.textContent = new XMLSerializer().serializeToString(root);
    document.body.append(out);
  }
  document.title = "rendered";
})().catch((error) => { document.title = "error: " + error; });
</script>
"""


class _Outputs(html.parser.HTMLParser):
    """The ``<pre id=...>`` texts and the title of the page Chromium dumped."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: dict[str, str] = {}
        self.title = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre":
            self._in = dict(attrs).get("id") or ""
            self.svgs[self._in] = ""
        elif tag == "title":
            self._in = "<title>"

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "<title>":
            self.title += data
        elif self._in is not None:
            self.svgs[self._in] += data


def _mermaid_js(workdir: Path) -> Path:
    """mermaid.min.js from npm's ``mermaid`` package, unpacked into ``workdir``."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("rendering needs npm (apt-get install npm)")
    subprocess.run(
        [npm, "pack", MERMAID, "--pack-destination", str(workdir), "--silent"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (tarball,) = workdir.glob("mermaid-*.tgz")
    with tarfile.open(tarball) as archive:
        member = archive.getmember("package/dist/mermaid.min.js")
        source = archive.extractfile(member)
        assert source is not None
        target = workdir / "mermaid.min.js"
        target.write_bytes(source.read())
    return target


def render(sources: dict[str, str], chromium: str) -> dict[str, str]:
    """SVG text of every diagram in ``sources`` (by name), drawn by mermaid in Chromium."""
    with tempfile.TemporaryDirectory(prefix="kwik-diagrams-") as tmp:
        workdir = Path(tmp)
        _mermaid_js(workdir)
        page = workdir / "render.html"
        page.write_text(PAGE.replace("SOURCES", json.dumps(sources), 1))
        dom = subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--allow-file-access-from-files",
                "--virtual-time-budget=30000", "--dump-dom", page.as_uri(),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout  # fmt: skip
    outputs = _Outputs()
    outputs.feed(dom)
    if outputs.title != "rendered":
        raise SystemExit(f"mermaid failed in Chromium: {outputs.title or 'no result'}")
    return outputs.svgs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=RENDER_COMMAND, description="Render the docs' Mermaid diagrams to SVG."
    )
    parser.add_argument("--all", action="store_true", help="render every diagram again")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)
    wanted: dict[str, str] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for source in diagrams(page.read_text()):
            wanted[digest(source)] = source
    SVG_DIR.mkdir(parents=True, exist_ok=True)
    missing = {
        name: source
        for name, source in wanted.items()
        if args.all or not (SVG_DIR / f"{name}.svg").is_file()
    }
    if missing:
        for name, svg in render(missing, args.chromium).items():
            (SVG_DIR / f"{name}.svg").write_text(svg + "\n")
            print(f"rendered docs/img/diagrams/{name}.svg")
    for stale in SVG_DIR.glob("*.svg"):
        if stale.stem not in wanted:
            stale.unlink()
            print(f"deleted docs/img/diagrams/{stale.name} (no diagram uses it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
