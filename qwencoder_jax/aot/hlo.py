"""Reading a compiled HLO module's text: collectives per step (loop bodies weighted by their trip counts), Mosaic
kernels, and a fingerprint of the program apart from its constants.

    figures = collectives(compiled.as_text())   # {"all-gather": {"count": .., "bytes": ..}, ...} per device per step
    fingerprint(text) == fingerprint(other)     # the same program, whatever its constants' values
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8}
# async forms whose result is a tuple (operands, results, context...): the results are element 1
_TUPLE_STARTS = {"all-gather-start", "collective-permute-start"}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([^\s(]+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([^\s=]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_CALLEE = re.compile(r"\b(calls|to_apply|condition|body)=%([^\s,)}]+)")
_CALLEE_LISTS = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")
_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_CONSTANT = re.compile(r"(?<=\bdense<)[^>]*(?=>)|(?<= constant\()[^()]*(?=\))")


@dataclasses.dataclass
class Instruction:
    name: str
    type: str  # the result type, e.g. "bf16[16,128]{1,0:T(8,128)}" or a tuple "(f32[8]{0}, ...)"
    opcode: str
    rest: str  # operands and attributes, after the opening parenthesis

    @property
    def operands(self) -> list[str]:
        return re.findall(r"%([^\s,)]+)", _split_top(self.rest)[0])


def _split_top(text: str, start: str = "(", end: str = ")", comma: bool = False) -> list[str]:
    """`text` cut at the parenthesis closing the one before it (comma=False: [inside, after]), or at top-level
    commas (comma=True)."""
    depth, parts, begin = 0, [], 0
    for i, char in enumerate(text):
        if char in "({[":
            depth += 1
        elif char in ")}]":
            if depth == 0 and not comma:
                return [text[:i], text[i + 1:]]
            depth -= 1
        elif char == "," and depth == 0 and comma:
            parts.append(text[begin:i])
            begin = i + 1
    return parts + [text[begin:]] if comma else [text, ""]


def parse(text: str) -> tuple[dict[str, list[Instruction]], str | None]:
    """Computations by name (in the order printed) and the entry computation's name."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = computations.setdefault(header.group(1), [])
            entry = header.group(1) if line.startswith("ENTRY") else entry
            continue
        match = _INSTRUCTION.match(line) if current is not None else None
        if match:
            current.append(Instruction(*match.groups()))
    return computations, entry


def _callees(instruction: Instruction) -> list[tuple[str, str]]:
    found = [(kind, name) for kind, name in _CALLEE.findall(instruction.rest)]
    for names in _CALLEE_LISTS.findall(instruction.rest):
        found += [("calls", name.strip().lstrip("%")) for name in names.split(",") if name.strip()]
    return found


def _constant(by_name: dict[str, Instruction], name: str) -> int | None:
    """The integer a value is, followed through copies and bitcasts to a constant; None if it is not one."""
    for _ in range(8):
        instruction = by_name.get(name)
        if instruction is None:
            return None
        if instruction.opcode == "constant":
            try:
                return int(_split_top(instruction.rest)[0])
            except ValueError:
                return None
        if instruction.opcode not in ("copy", "bitcast", "convert") or not instruction.operands:
            return None
        name = instruction.operands[0]
    return None


def trip_count(loop: Instruction, caller: list[Instruction], computations: dict) -> int | None:
    """A while loop's trip count: XLA's known_trip_count, else `i < N` in its condition with i's start a constant."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop.rest)
    if known:
        return int(known.group(1))
    condition = computations.get(dict(_callees(loop)).get("condition"), [])
    in_condition = {i.name: i for i in condition}
    root = condition[-1] if condition else None  # the ROOT is printed last
    if root is None or root.opcode != "compare" or "direction=LT" not in root.rest or len(root.operands) != 2:
        return None
    counter, limit = in_condition.get(root.operands[0]), _constant(in_condition, root.operands[1])
    if counter is None or counter.opcode != "get-tuple-element" or limit is None:
        return None
    index = int(re.search(r"index=(\d+)", counter.rest).group(1))
    by_name = {i.name: i for i in caller}
    init = by_name.get(loop.operands[0]) if loop.operands else None
    if init is None or init.opcode != "tuple" or index >= len(init.operands):
        return None
    start = _constant(by_name, init.operands[index])
    return None if start is None else max(limit - start, 0)


def multiplicities(computations: dict[str, list[Instruction]], entry: str) -> tuple[dict[str, int], list]:
    """How many times each computation runs per execution of the entry (while bodies x their trip counts), and
    the trip counts of the while loops found (None where it could not be read: counted once)."""
    times = {entry: 1}
    trips = []
    order = list(computations)[::-1]  # HLO prints callees before their callers
    for name in order:
        if name not in times:
            continue
        for instruction in computations[name]:
            count = None
            if instruction.opcode == "while":
                count = trip_count(instruction, computations[name], computations)
                trips.append(count)
            for kind, callee in _callees(instruction):
                factor = count if kind == "body" and count is not None else 1
                times[callee] = times.get(callee, 0) + times[name] * factor
    return times, trips


def _bytes(type_text: str) -> int:
    return sum(math.prod(int(d) for d in filter(None, dims.split(","))) * DTYPE_BYTES[dtype]
               for dtype, dims in _SHAPE.findall(type_text))


def _reduce_scatter_fusion(instruction: Instruction) -> bool:
    """XLA TPU's fused reduce-scatter: an all-reduce + dynamic slice computation run by one collective emitter."""
    return instruction.opcode == "fusion" and (
        '"emitter":"AllReduceScatterFusion"' in instruction.rest
        or any(callee.startswith("all-reduce-scatter") for _, callee in _callees(instruction)))


def _collective_kind(instruction: Instruction) -> tuple[str | None, str]:
    """(kind, result type) of a collective instruction; (None, "") for anything else."""
    if _reduce_scatter_fusion(instruction):
        return "reduce-scatter", instruction.type
    kind = instruction.opcode.removesuffix("-start")
    if kind not in COLLECTIVES:
        return None, ""
    if instruction.opcode in _TUPLE_STARTS and instruction.type.startswith("("):
        elements = _split_top(instruction.type[1:-1], comma=True)
        return kind, elements[1] if len(elements) > 1 else instruction.type
    return kind, instruction.type


def _async_key(kind: str, instruction: Instruction) -> tuple[str, str] | None:
    channel = _CHANNEL.search(instruction.rest)
    return (kind, channel.group(1)) if channel else None


def _async_starts(computations: dict[str, list[Instruction]]) -> set[tuple[str, str]]:
    """(kind, channel_id) of the collectives libtpu's async collective fusion starts (AsyncCollectiveStart)."""
    keys = set()
    for instructions in computations.values():
        if any('custom_call_target="AsyncCollectiveStart"' in i.rest for i in instructions):
            keys |= {_async_key(kind, i) for i in instructions for kind in [_collective_kind(i)[0]] if kind}
    return keys - {None}


def _async_continuation(name: str, instructions: list[Instruction]) -> bool:
    """A computation that carries an already started async collective on (its continuation or its done part)."""
    texts = [i.rest for i in instructions]
    return (not any('custom_call_target="AsyncCollectiveStart"' in t for t in texts)
            and (name.startswith("async_collective_fusion")
                 or any('custom_call_target="AsyncCollectiveDone"' in t for t in texts)))


def collectives(text: str) -> tuple[dict[str, dict[str, int]], list]:
    """Collectives by kind, {"count": executions, "bytes": bytes of their results} per device per step, with ops in
    loop bodies counted once per iteration; and the while loops' trip counts. A reduce-scatter fusion counts as
    one reduce-scatter of its (scattered) results, not as the all-reduce inside it. An async collective fusion
    (libtpu's async collective flags) repeats its collective in its start, continuation and done computations under
    one channel_id: it counts once, at its start."""
    computations, entry = parse(text)
    figures = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
    if entry is None:
        return figures, []
    times, trips = multiplicities(computations, entry)
    inside_fusions = {callee for instructions in computations.values() for i in instructions
                      if _reduce_scatter_fusion(i) for _, callee in _callees(i)}
    started = _async_starts(computations)
    for name, instructions in computations.items():
        weight = times.get(name, 0)
        if not weight or name in inside_fusions:
            continue
        continuation = _async_continuation(name, instructions)
        for instruction in instructions:
            kind, type_text = _collective_kind(instruction)
            if kind is None or (continuation and _async_key(kind, instruction) in started):
                continue
            figures[kind]["count"] += weight
            figures[kind]["bytes"] += weight * _bytes(type_text)
    return figures, trips


def mosaic_kernels(text: str) -> int:
    return text.count('custom_call_target="tpu_custom_call"')


def mask_constants(text: str) -> str:
    """The program text with every constant's value (StableHLO `dense<...>`, HLO `constant(...)`) replaced by #."""
    return _CONSTANT.sub("#", text)


def fingerprint(text: str) -> str:
    """A hash of the program apart from its constants' values (16 hex digits)."""
    return hashlib.sha256(mask_constants(text).encode()).hexdigest()[:16]


def constant_differences(a: str, b: str) -> list[tuple[str, str]] | None:
    """The constants whose values differ between two programs equal apart from constants (in program order), or
    None when the programs differ otherwise."""
    if mask_constants(a) != mask_constants(b):
        return None
    return [(x, y) for x, y in zip(_CONSTANT.findall(a), _CONSTANT.findall(b)) if x != y]
