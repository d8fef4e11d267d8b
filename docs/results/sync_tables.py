"""Copy generated `lelp report` output into docs/RESULTS.md, so no number there is typed by hand.

docs/RESULTS.md holds blocks

    <!-- BEGIN generated: digits/report.md -->
    ...
    <!-- END generated -->

This script replaces each block's body with the named report.md (relative to
docs/results/), minus its two title lines (or a 'pending' line while it is missing), with image links re-rooted at
docs/. README.md's blocks (its results table) are filled the same way. Run from anywhere:
`python docs/results/sync_tables.py`.
"""
from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "RESULTS.md"
README = HERE.parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- BEGIN generated: (?P<src>[^ ]+) -->\n)(?P<body>.*?)(<!-- END generated -->)", re.S)


def body_of(src: str) -> str:
    """The report's text after its '# lelp report' title and legend, images re-rooted."""
    path = HERE / src
    if not path.is_file():
        return f"*pending: {src} not generated yet*\n"
    text = path.read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("# lelp report") and not ln.startswith("Test accuracy in %")]
    folder = Path(src).parent.as_posix()
    out = "\n".join(lines).strip() + "\n"
    return re.sub(r"\]\(([^)/]+\.png)\)", lambda m: f"](results/{folder}/{m.group(1)})", out)


def main() -> None:
    for doc in (RESULTS, README):
        text = doc.read_text()
        new = BLOCK.sub(lambda m: m.group(1) + body_of(m.group("src")) + m.group(4), text)
        doc.write_text(new)
        print(f"synced {len(BLOCK.findall(text))} generated blocks into {doc}")


if __name__ == "__main__":
    main()
