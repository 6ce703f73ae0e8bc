"""Every gin name checked: an unknown macro, configurable or parameter is one line naming it and the closest
known names, before any work.

gin itself accepts a binding of a macro nobody references (`--gin.TOTAL_STEPZ=12` defines a new, unused macro),
and reports an unknown parameter as a multi-line ValueError. `check_macros` runs after parsing; `describe`
turns any configuration error into one line.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Iterable, Sequence

from gin import config as gin_config

MACRO_SELECTOR = "gin.macro"


class GinConfigError(ValueError):
    """A configuration mistake, in one line."""


def _closest(name: str, known: Iterable[str], count: int = 3) -> str:
    known = sorted(set(known))
    matches = difflib.get_close_matches(name, known, n=count, cutoff=0.5)
    if not matches:
        matches = difflib.get_close_matches(name.upper(), [k.upper() for k in known], n=count, cutoff=0.5)
        matches = [k for k in known if k.upper() in matches][:count]
    return f"; closest known: {', '.join(matches)}" if matches else ""


def _references(value: Any) -> Iterable[gin_config.ConfigurableReference]:
    if isinstance(value, gin_config.ConfigurableReference):
        yield value
    elif isinstance(value, dict):
        for item in (*value.keys(), *value.values()):
            yield from _references(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _references(item)


def bound_macros() -> dict[str, Any]:
    """Macro name -> value of every macro the parsed config defines."""
    return {scope: params.get("value") for (scope, selector), params in gin_config._CONFIG.items()
            if selector == MACRO_SELECTOR}


def referenced_macros() -> set[str]:
    """Names of the macros some binding refers to (`%NAME`), directly or through another macro."""
    names = set()
    for params in gin_config._CONFIG.values():
        for reference in _references(list(params.values())):
            if reference.selector == MACRO_SELECTOR and reference.scopes:
                names.add(reference.scopes[-1])
    return names


def binding_keys(bindings: Sequence[str]) -> list[str]:
    """The KEY of each 'KEY = VALUE' binding (a macro name or configurable.parameter)."""
    return [binding.split("=", 1)[0].strip() for binding in bindings if "=" in binding]


def check_macros(bindings: Sequence[str]) -> None:
    """Raises GinConfigError for a binding of a macro that nothing in the parsed config uses (a typo)."""
    used = referenced_macros()
    for key in binding_keys(bindings):
        if "." in key or "/" in key:  # configurable.parameter: gin checks those names itself
            continue
        if key not in used:
            raise GinConfigError(f"unknown gin macro {key!r}: no gin file uses %{key}{_closest(key, used)}")


def _configurable_names() -> set[str]:
    names = set()
    for selector in gin_config._REGISTRY._selector_map:  # SelectorMap has no public listing
        names.add(selector.rsplit(".", 1)[-1])
    return names - {"macro", "constant", "REQUIRED"}


def _parameters(name: str) -> list[str]:
    configurable = gin_config._REGISTRY.get_match(name)
    if configurable is None:
        return []
    if configurable.allowlist:
        return list(configurable.allowlist)
    try:
        return [p for p in inspect.signature(configurable.wrapped).parameters if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        return []


def describe(error: BaseException) -> str:
    """One line for a gin (or config-building) error, naming the name and the closest known ones."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if isinstance(error, GinConfigError):
        return first
    match = re.search(r"Configurable '([\w.]+)' doesn't (?:have a parameter named|include kwarg) '(\w+)'", first)
    if match:
        configurable, parameter = match.groups()
        return (f"unknown gin parameter {configurable}.{parameter}"
                f"{_closest(parameter, _parameters(configurable))}")
    match = re.search(r"No configurable matching '([\w.]+)'", first)
    if match:
        name = match.group(1)
        return f"unknown gin configurable {name!r}{_closest(name.rsplit('.', 1)[-1], _configurable_names())}"
    match = re.search(r"No bindings specified for '(\w+)/gin.macro'", first)
    if match:
        name = match.group(1)
        return f"unknown gin macro %{name}: no file or binding defines it{_closest(name, bound_macros())}"
    match = re.search(r"(\w+)/macro.value set to `%gin.REQUIRED` but not subsequently overridden", first)
    if match:
        name = match.group(1)
        return f"gin macro {name} is required: give it, e.g. --gin.{name}=..."
    match = re.search(r"Unable to find file '([^']+)'", text)
    if match:
        return f"gin file {match.group(1)!r} not found"
    return f"{type(error).__name__}: {first}" if not isinstance(error, ValueError) else first
