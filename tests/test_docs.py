"""The repository carries the documents its README and code cite."""

from __future__ import annotations

import re

from .helpers import ROOT

DESIGN = ROOT / "docs" / "design.md"
SOURCES = sorted(p for d in ("greenzmq", "services", "tests") for p in (ROOT / d).rglob("*.py"))


class TestDesignRules:
    def test_every_cited_rule_is_in_the_repository(self) -> None:
        """Each "rule N" a comment or docstring cites is a numbered rule of docs/design.md."""
        rules = {int(n) for n in re.findall(r"^(\d+)\. ", DESIGN.read_text(), re.M)}
        cited = {
            (p.relative_to(ROOT).as_posix(), int(n))
            for p in SOURCES
            for n in re.findall(r"\brules? (\d+)\b", p.read_text())
        }
        assert cited, "no rule citations found: the pattern is wrong"
        missing = sorted((f, n) for f, n in cited if n not in rules)
        assert not missing, f"cited rules missing from docs/design.md: {missing}"

    def test_nothing_points_outside_the_repository(self) -> None:
        """README, setup.py and the code never cite ../shared (not part of a checkout)."""
        files = [
            ROOT / "README.md",
            ROOT / "setup.py",
            *(p for p in SOURCES if p.name != "test_docs.py"),
        ]
        offenders = [
            p.relative_to(ROOT).as_posix() for p in files if "shared/notes" in p.read_text()
        ]
        assert not offenders, offenders

    def test_readme_links_exist(self) -> None:
        """Every relative link in the README names a file of the repository."""
        links = re.findall(r"\]\(((?!https?:|#)[^)#]+)", (ROOT / "README.md").read_text())
        assert links, "no relative links found"
        missing = [link for link in links if not (ROOT / link).exists()]
        assert not missing, missing
