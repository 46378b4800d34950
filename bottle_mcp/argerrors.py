"""Bad tool arguments explained in sentences: which argument, what is wrong with it, what is allowed.

The input schema does the checking (the SDK validates the arguments with the model behind it);
this only rewrites pydantic's report, which ends in a link to pydantic's site, into words a
supervising model can act on. What is allowed comes from the tool's own JSON Schema, so the
message and the schema cannot disagree.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from .textfit import clip


def _shown(value: Any) -> str:
    text = repr(value)
    return clip(text, 60, "value") if len(text) > 60 else text


def _kinds(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in prop.get("anyOf", [prop]) if isinstance(p, dict)]


def allowed(prop: dict[str, Any]) -> str:
    """What a schema property allows, in words."""
    words = []
    for kind in _kinds(prop):
        t = kind.get("type")
        if t == "null":
            words.append("null (leave it out)")
            continue
        if "enum" in kind:
            words.append("one of " + ", ".join(repr(v) for v in kind["enum"]))
            continue
        name = {"integer": "a whole number", "number": "a number", "string": "a string", "boolean": "true or false"}
        part = name.get(str(t), str(t or "a value"))
        limits = []
        if "exclusiveMinimum" in kind:
            limits.append(f"above {kind['exclusiveMinimum']:g}")
        if "minimum" in kind:
            limits.append(f"at least {kind['minimum']:g}")
        if "maximum" in kind:
            limits.append(f"at most {kind['maximum']:g}")
        if "exclusiveMaximum" in kind:
            limits.append(f"below {kind['exclusiveMaximum']:g}")
        if "minLength" in kind:
            limits.append(f"at least {kind['minLength']} characters")
        if "maxLength" in kind:
            limits.append(f"at most {kind['maxLength']} characters")
        if "pattern" in kind:
            limits.append(f"matching {kind['pattern']}")
        words.append(part + (" " + " and ".join(limits) if limits else ""))
    return " or ".join(words) or "any value"


def _problem(err: dict[str, Any]) -> str:
    kind = str(err.get("type", ""))
    value = err.get("input")
    if kind == "missing":
        return "is required but was not given"
    if kind in {"string_too_long", "string_too_short"}:
        return f"is {len(value) if isinstance(value, str) else '?'} characters long"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"is {_shown(value)}, out of range"
    if kind.endswith(("_parsing", "_type")):
        return f"is {_shown(value)}, which is not the right type"
    return f"is {_shown(value)}: {err.get('msg', 'not allowed')}"


def describe(tool: str, exc: ValidationError, schema: dict[str, Any] | None) -> str:
    """One sentence per bad argument; no pydantic dump, no link."""
    props: dict[str, Any] = (schema or {}).get("properties", {})
    sentences = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if str(p) not in {"", "root"}]
        name = loc[0] if loc else "(the arguments)"
        prop = props.get(name)
        where = name if len(loc) < 2 else ".".join(loc)
        sentence = f"Argument '{where}' {_problem(dict(err))}"
        if prop is not None:
            sentence += f"; allowed: {allowed(prop)}"
            if "default" in prop:
                sentence += f" (default {json.dumps(prop['default'])} when left out)"
        sentences.append(sentence + ".")
    known = ", ".join(props) or "none"
    return (
        f"Invalid arguments for {tool}: " + " ".join(sentences) + f" The arguments of {tool} are: {known}. "
        "Fix the call and try again."
    )
