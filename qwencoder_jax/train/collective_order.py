"""Collectives a compiled program may start in different orders on different processes.

XLA:CPU runs independent operations of a program concurrently, and its gloo collectives block the threads that
run them. Collectives start in the scheduled program order, but a while loop runs on its own: when a top-level
collective scheduled after a loop that communicates neither depends on it nor is depended on by it, one process
may enter the loop's collective first and another the top-level one, and both wait forever (docs/reliability.md).
`unordered_collectives` finds such pairs in compiled (scheduled) HLO text; an empty list means none.
"""

from __future__ import annotations

import re

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(")
_CALLED = re.compile(r"\b(?:calls|body|condition|to_apply|branch_computations)=\{?([^}]*?)\}?(?=,\s*\w+=|$)")
_NAME = re.compile(r"%([\w.\-]+)")


def _computations(hlo: str) -> tuple[dict[str, list[str]], str | None]:
    """{computation name: its instruction lines}, and the entry computation's name."""
    computations, entry, current = {}, None, None
    for line in hlo.splitlines():
        if current is None:
            match = _COMPUTATION.match(line)
            if match and "=" not in line.split("{")[0].split("->")[0].split("(")[0]:
                current = match.group(2)
                computations[current] = []
                entry = current if match.group(1) else entry
        elif line.strip() == "}":
            current = None
        else:
            computations[current].append(line)
    return computations, entry


def _opcode(line: str) -> tuple[str, str] | None:
    match = _INSTRUCTION.match(line)
    return (match.group(1), match.group(2)) if match else None


def _is_collective(opcode: str) -> bool:
    return any(opcode == kind or opcode == f"{kind}-start" for kind in COLLECTIVES)


def _called(line: str) -> list[str]:
    names = []
    for group in _CALLED.findall(line):
        names += _NAME.findall(group) or [name.strip() for name in group.split(",") if name.strip()]
    return names


def _communicates(computations: dict[str, list[str]], name: str, seen: set[str]) -> bool:
    if name in seen or name not in computations:
        return False
    seen.add(name)
    for line in computations[name]:
        parsed = _opcode(line)
        if parsed and _is_collective(parsed[1]):
            return True
        if any(_communicates(computations, callee, seen) for callee in _called(line)):
            return True
    return False


def collectives_after_loops(hlo: str) -> list[tuple[str, str, bool]]:
    """(top-level collective, while loop, ordered) for each collective of the entry computation scheduled after a
    loop whose body communicates; ordered: a dependency path joins them (either way)."""
    computations, entry = _computations(hlo)
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    operands, kinds, order = {}, {}, {}
    for line in computations[entry]:
        parsed = _opcode(line)
        if not parsed:
            continue
        name, opcode = parsed
        kinds[name] = opcode
        order[name] = len(order)
        callees = set(_called(line))
        operands[name] = {ref for ref in _NAME.findall(line.split("=", 1)[1]) if ref not in callees and ref != name}
    ancestors: dict[str, set[str]] = {}

    def ancestors_of(name: str) -> set[str]:
        if name not in ancestors:
            found: set[str] = set()
            stack = [ref for ref in operands.get(name, ()) if ref in operands]
            while stack:
                ref = stack.pop()
                if ref in found:
                    continue
                found.add(ref)
                stack += [r for r in operands[ref] if r in operands and r not in found]
            ancestors[name] = found
        return ancestors[name]

    loops = [name for name, opcode in kinds.items() if opcode == "while"
             and any(_communicates(computations, callee, set()) for callee in _called(
                 next(line for line in computations[entry] if (_opcode(line) or ("",))[0] == name)))]
    collectives = [name for name, opcode in kinds.items() if _is_collective(opcode)]
    return [(collective, loop, loop in ancestors_of(collective) or collective in ancestors_of(loop))
            for collective in collectives for loop in loops if order[collective] > order[loop]]


def unordered_collectives(hlo: str) -> list[tuple[str, str]]:
    """(collective, loop) pairs that may run in different orders on different processes (see the module doc)."""
    return [(collective, loop) for collective, loop, ordered in collectives_after_loops(hlo) if not ordered]
