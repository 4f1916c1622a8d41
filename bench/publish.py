"""Print a benchmark's markdown and write it to its results file (atomically, so a killed run
never leaves half a table under bench/results/)."""

from __future__ import annotations

from pathlib import Path


def publish(text: str, out: Path | str | None) -> None:
    print(text)
    if out is None:
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
