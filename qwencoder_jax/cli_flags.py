"""One flag style for every command line of the project: `--snake_case`.

`ArgumentParser` is argparse's, except that each multi-word flag also parses in kebab-case (`--dry-run` is
`--dry_run`), so older commands keep working, while --help, usage lines and errors show only the snake_case
spelling. A kebab-case flag defined in a program is refused when the parser first parses.
"""

from __future__ import annotations

import argparse


def kebab(option: str) -> str:
    """`--dry_run` -> `--dry-run` (single-dash options unchanged)."""
    return "--" + option[2:].replace("_", "-") if option.startswith("--") else option


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser with hidden kebab-case aliases; subcommand parsers are of this class too."""

    def parse_known_args(self, args=None, namespace=None):
        self._add_kebab_aliases()
        return super().parse_known_args(args, namespace)

    def _add_kebab_aliases(self) -> None:
        for action in self._actions:
            for option in action.option_strings:
                if option.startswith("--") and "-" in option[2:]:
                    raise ValueError(f"{self.prog}: flag {option} is kebab-case; define it as "
                                     f"--{option[2:].replace('-', '_')} (the kebab spelling is accepted as an alias)")
                # only the parse table learns the alias: help and errors read action.option_strings
                self._option_string_actions.setdefault(kebab(option), action)

    def _get_option_tuples(self, option_string):
        # An abbreviation that matches a flag and its alias names one flag, not two (argparse would call it
        # ambiguous); the first match is the snake_case spelling.
        unique = {}
        for option_tuple in super()._get_option_tuples(option_string):
            unique.setdefault(id(option_tuple[0]), option_tuple)
        return list(unique.values())
