"""docs/benchmarks.md is written by several benchmarks, each in a section of its own between two markers, so a run
of one replaces its section and leaves the others as they were."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import ROOT

DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True, slots=True)
class Section:
    """One benchmark's part of the page: its text starts with `begin` and ends with `end`."""

    begin: str
    end: str

    def of(self, page: str) -> str:
        """This section of `page`, markers included, or ""."""
        if self.begin not in page or self.end not in page:
            return ""
        return page[page.index(self.begin) : page.index(self.end) + len(self.end)]

    def replace(self, page: str, section: str) -> str:
        """`page` with this section replaced by `section` (added at the end when it has none)."""
        section = section.rstrip("\n")
        if self.of(page):
            return page[: page.index(self.begin)] + section + page[page.index(self.end) + len(self.end) :]
        return (page.rstrip("\n") + "\n\n" if page.strip() else "# Benchmarks\n\n") + section + "\n"

    def carry(self, old: str, new: str) -> str:
        """A page rendered anew (`new`), keeping this section as the page it replaces (`old`) had it."""
        kept = self.of(old)
        return self.replace(new, kept) if kept else new

    def write(self, section: str, doc: Path = DOC) -> None:
        """Put `section` in the page on disk."""
        doc.write_text(self.replace(doc.read_text() if doc.exists() else "", section))
