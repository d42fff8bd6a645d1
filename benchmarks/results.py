"""Write one script's section of benchmarks/results.md, keeping the other scripts' sections."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.md"


def replace_section(text: str, path: Path = RESULTS) -> None:
    """Put `text` (which starts with its "## " heading) in place of the section with that
    heading, or append it."""
    heading = text.split("\n", 1)[0]
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    start = old.find(heading + "\n")
    if start == -1:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(heading))
        rest = old[end + 1 :] if end != -1 else ""
        new = old[:start] + text.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    path.write_text(new.rstrip("\n") + "\n")
