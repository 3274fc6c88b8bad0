"""Environment check: the FERRY_* settings each deployed function gets against those its code reads.

What a function's code reads: every `"FERRY_..."` literal in its crate's sources, in ferry-lambda
(the settings every function shares) and, for the vote functions, in ferry-aws's `votes` (where
`VoteSettings` reads them). Which function reads which, and with what default, is the README's
"Settings of the functions" table. A function fails the check when

- its code reads a variable the table does not document;
- the table lists it for a variable with no default (`(required)`) that its deployed environment
  does not set;
- its deployed environment sets a FERRY_* variable its code never reads (a misspelling, or a
  setting left behind), or one the table does not list for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LITERAL = re.compile(r'"(FERRY_[A-Z0-9_]+)"')
VOTE_FUNCTIONS = {"regional-normalizer", "global-merger"}


@dataclass(frozen=True)
class Setting:
    functions: frozenset[str]
    required_for: frozenset[str]
    default: str


def code_variables(crate_dir: Path, binary: str) -> set[str]:
    dirs = [crate_dir / "src", ROOT / "crates" / "ferry-lambda" / "src"]
    files = [p for d in dirs for p in d.rglob("*.rs")]
    if binary in VOTE_FUNCTIONS:
        votes = ROOT / "crates" / "ferry-aws" / "src"
        files += [votes / "votes.rs"] + list((votes / "votes").rglob("*.rs"))
    out: set[str] = set()
    for f in files:
        if f.exists():
            out |= set(LITERAL.findall(f.read_text(encoding="utf-8")))
    return out


def readme_settings(functions: set[str], readme: Path = README) -> dict[str, Setting]:
    text = readme.read_text(encoding="utf-8")
    start = text.index("### Settings of the functions")
    end = text.find("\n### ", start + 1)
    table: dict[str, Setting] = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
        fns: set[str] = set()
        required: set[str] = set()
        for part in cells[1].split(";"):
            named = {f for f in functions if re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", part)}
            fns |= named
            if "(required)" in part:
                required |= named
        if "(required)" in cells[2]:
            required |= fns
        for n in names:
            table[n] = Setting(frozenset(fns), frozenset(required), cells[2])
    return table


def check(deployed: dict[str, dict[str, str]], crates: dict[str, Path], readme: Path = README) -> list[str]:
    """Problems, each naming the function and the variable. `deployed`: binary -> its deployed
    environment; `crates`: binary -> its crate's directory."""
    table = readme_settings(set(deployed), readme)
    problems = []
    for fn, env in sorted(deployed.items()):
        reads = code_variables(crates[fn], fn)
        for var in sorted(reads):
            if var not in table:
                problems.append(f"{fn}: its code reads {var}, which the README's settings table does not document")
        for var, s in sorted(table.items()):
            if fn in s.required_for and var in reads and not (env.get(var) or "").strip():
                problems.append(f"{fn}: {var} is required (no default) and the template does not set it")
        for var in sorted(v for v in env if v.startswith("FERRY_")):
            if var not in reads:
                problems.append(f"{fn}: the template sets {var}, which no code of {fn} reads")
            elif var in table and fn not in table[var].functions:
                problems.append(f"{fn}: the template sets {var}, which the README's settings table does not list for {fn}")
    return problems
