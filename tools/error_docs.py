"""Rewrite the README's list of error codes from the table (``errors/codes.py``).

python -m tools.error_docs          # rewrite README.md's section
python -m tools.error_docs --check  # exit 1 when the section is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from errors.codes import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- error-codes:start -->", "<!-- error-codes:end -->"


def readme_section(text: str) -> str:
    """The text between the README's markers (without them)."""
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def with_section(text: str) -> str:
    """``text`` with the section between the markers replaced by the generated list."""
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the section is stale")
    args = parser.parse_args()
    text = README.read_text()
    if args.check:
        sys.exit(0 if readme_section(text) == markdown_table() else 1)
    README.write_text(with_section(text))


if __name__ == "__main__":
    main()
