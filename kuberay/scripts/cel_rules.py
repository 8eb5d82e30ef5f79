"""Evaluate a CRD's `x-kubernetes-validations` CEL rules on an object, offline.

The API server evaluates each rule with `self` bound to the value at the schema
node that carries it, for every value present there (each list item, each map
value). This walks the upstream openAPIV3Schema the same way and evaluates each
rule with cel-python (`celpy`), plus the functions of the Kubernetes CEL
libraries that the CRDs in ../shared/crds use and celpy lacks (`split` from the
strings extension, `find` from the regex library). Rules are compiled once.

Outcome per rule, never silent:
* true: passes;
* false: an error with the rule's `message` (or the rule text);
* anything else (evaluation error, unknown function, non-bool): an error
  "cannot evaluate", so an unsupported rule fails the check instead of passing;
* transition rules (they use `oldSelf`, and no `optionalOldSelf`): the API server
  evaluates them on update only; they are reported as notes, one per rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes

OLD_SELF = re.compile(r"\boldSelf\b")


def _split(s: celtypes.StringType, sep: celtypes.StringType, *limit: celtypes.IntType) -> celtypes.ListType:
    n = int(limit[0]) if limit else -1
    if n == 0:
        return celtypes.ListType([])
    parts = str(s).split(str(sep), n - 1) if n > 0 else str(s).split(str(sep))
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def _find(s: celtypes.StringType, regex: celtypes.StringType) -> celtypes.StringType:
    m = re.search(str(regex), str(s))
    return celtypes.StringType(m.group(0) if m else "")


def _find_all(s: celtypes.StringType, regex: celtypes.StringType, *limit: celtypes.IntType) -> celtypes.ListType:
    found = [m.group(0) for m in re.finditer(str(regex), str(s))]
    if limit and int(limit[0]) >= 0:
        found = found[: int(limit[0])]
    return celtypes.ListType([celtypes.StringType(f) for f in found])


KUBERNETES_FUNCTIONS = {"split": _split, "find": _find, "findAll": _find_all}
_ENV = celpy.Environment()


@lru_cache(maxsize=None)
def _program(rule: str) -> celpy.Runner:
    return _ENV.program(_ENV.compile(rule), functions=KUBERNETES_FUNCTIONS)


@dataclass
class Result:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evaluated: int = 0


def evaluate(schema: dict[str, Any], value: Any) -> Result:
    result = Result()
    _walk(schema, value, "", result)
    return result


def _walk(schema: dict[str, Any], value: Any, path: str, result: Result) -> None:
    if not isinstance(schema, dict) or value is None:
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        _check(rule, value, path or "<root>", result)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name in value:
                _walk(sub, value[name], f"{path}/{name}", result)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k, v in value.items():
                if k not in props:
                    _walk(extra, v, f"{path}/{k}", result)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _walk(schema["items"], item, f"{path}/{i}", result)


def _check(rule: dict[str, Any], value: Any, path: str, result: Result) -> None:
    text = rule["rule"]
    where = f"{path}{rule.get('fieldPath', '')}"
    if OLD_SELF.search(text) and not rule.get("optionalOldSelf"):
        result.notes.append(f"transition rule at {path} is evaluated on update only: {text}")
        return
    if OLD_SELF.search(text):
        result.errors.append(f"{where}: cannot evaluate optionalOldSelf rule offline: {text}")
        return
    try:
        out = _program(text).evaluate({"self": celpy.json_to_cel(value)})
    except Exception as exc:  # compile/evaluation errors of any kind
        result.errors.append(f"{where}: cannot evaluate CEL rule {text!r}: {type(exc).__name__}: {str(exc)[:200]}")
        return
    result.evaluated += 1
    if isinstance(out, celtypes.BoolType) or isinstance(out, bool):
        if not bool(out):
            result.errors.append(f"{where}: {rule.get('message') or 'failed rule'} (rule: {text})")
        return
    result.errors.append(f"{where}: cannot evaluate CEL rule {text!r}: result {type(out).__name__} {str(out)[:200]}")
