"""A small evaluator for the Go text/template subset KServe's LLM configs use.

KServe marshals the merged LLMInferenceServiceConfig to JSON and executes it as a Go
template over the service object (``ReplaceVariables`` in
``pkg/controller/v1alpha2/llmisvc/config_merge.go``, ``missingkey=error``). The fixtures
and the chart's presets use: ``{{ if }} / {{ else }} / {{ end }}``, field chains
(``.Spec.Parallelism.Tensor``), parenthesised pipelines, ``and`` / ``or`` (short-circuit,
as since Go 1.18), ``not``, integer and raw-string literals, ``nil``, and KServe's
``ChildName``, ``shutdownTimeout`` and ``kvTransferConfig``; ``{{-`` / ``-}}`` trim
whitespace as in Go. Anything else raises, so a template construct this does not know
fails the test instead of rendering wrongly.

Field access follows Go: a field of a nil pointer is an error (``nil pointer
evaluating``); an unset optional field is nil (None here).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r"\s*(\(|\)|`[^`]*`|\"(?:[^\"\\]|\\.)*\"|[^\s()]+)")


class TemplateError(ValueError):
    """The template uses something this evaluator does not implement, or fails in Go."""


@dataclass
class _Node:
    kind: str  # "text", "action", "if"
    text: str = ""
    cond: str = ""
    then: list[_Node] = field(default_factory=list)
    other: list[_Node] = field(default_factory=list)


def _parse(text: str) -> list[_Node]:
    root: list[_Node] = []
    stack: list[tuple[_Node, list[_Node]]] = []
    current = root
    pos = 0
    pending_trim = False
    for m in _ACTION.finditer(text):
        chunk = text[pos:m.start()]
        if pending_trim:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        if chunk:
            current.append(_Node("text", text=chunk))
        pending_trim = bool(m.group(3))
        pos = m.end()
        action = m.group(2).strip()
        word = action.split(None, 1)[0] if action else ""
        if word == "if":
            node = _Node("if", cond=action[2:].strip())
            current.append(node)
            stack.append((node, current))
            current = node.then
        elif word == "else":
            if action != "else" or not stack:
                raise TemplateError(f"unsupported: {{{{ {action} }}}}")
            current = stack[-1][0].other
        elif word == "end":
            if not stack:
                raise TemplateError("{{ end }} without {{ if }}")
            _, current = stack.pop()
        elif word in ("range", "with", "define", "template", "block"):
            raise TemplateError(f"unsupported: {{{{ {action} }}}}")
        else:
            current.append(_Node("action", text=action))
    chunk = text[pos:]
    if pending_trim:
        chunk = chunk.lstrip()
    if chunk:
        current.append(_Node("text", text=chunk))
    if stack:
        raise TemplateError("unclosed {{ if }}")
    return root


def _truth(value: Any) -> bool:
    return value not in (None, False, 0, "") and value != [] and value != {}


def _child_name(parent: str, suffix: str) -> str:
    # knative kmeta.ChildName: parent+suffix when it fits in 63 characters (the fixtures'
    # names always do here).
    name = parent + suffix
    if len(name) > 63:
        raise TemplateError(f"ChildName of {name!r} would be hashed; not emulated")
    return name


def _shutdown_timeout(pod_spec: Any, pre_stop: int) -> int:
    tgps = 60
    if isinstance(pod_spec, Mapping) and pod_spec.get("TerminationGracePeriodSeconds"):
        tgps = int(pod_spec["TerminationGracePeriodSeconds"])
    return max(0, tgps - pre_stop - min(5, tgps))


def _kv_transfer_config(spec: Any) -> str:
    if spec is None:
        return ""
    raise TemplateError("kvTransferConfig with KV cache offloading is not emulated")


FUNCS: dict[str, Callable[..., Any]] = {
    "ChildName": _child_name,
    "shutdownTimeout": _shutdown_timeout,
    "kvTransferConfig": _kv_transfer_config,
}


class _Eval:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def pipeline(self, text: str) -> Any:
        tokens = [t for t in _TOKEN.findall(text) if t]
        value, rest = self._command(tokens)
        if rest:
            raise TemplateError(f"unsupported pipeline: {text!r}")
        return value

    # A command: an operand, or a function applied to lazily evaluated arguments.
    def _command(self, tokens: list[str]) -> tuple[Any, list[str]]:
        args: list[list[str]] = []
        while tokens and tokens[0] != ")":
            operand, tokens = self._operand_tokens(tokens)
            args.append(operand)
        if not args:
            raise TemplateError("empty command")
        head = args[0]
        if len(head) == 1 and head[0] in ("and", "or", "not", *FUNCS):
            name = head[0]
            thunks = [lambda a=a: self._operand(a) for a in args[1:]]
            if name == "and":
                result = True
                for t in thunks:
                    result = t()
                    if not _truth(result):
                        return result, tokens
                return result, tokens
            if name == "or":
                result = False
                for t in thunks:
                    result = t()
                    if _truth(result):
                        return result, tokens
                return result, tokens
            if name == "not":
                return not _truth(thunks[0]()), tokens
            return FUNCS[name](*(t() for t in thunks)), tokens
        if len(args) != 1:
            raise TemplateError(f"unknown function in {args!r}")
        return self._operand(head), tokens

    def _operand_tokens(self, tokens: list[str]) -> tuple[list[str], list[str]]:
        if tokens[0] == "(":
            depth = 0
            for end, t in enumerate(tokens):
                depth += t == "("
                depth -= t == ")"
                if depth == 0:
                    return tokens[: end + 1], tokens[end + 1:]
            raise TemplateError(f"unbalanced parentheses in {tokens!r}")
        return tokens[:1], tokens[1:]

    def _operand(self, tokens: list[str]) -> Any:
        if tokens[0] == "(":
            value, rest = self._command(tokens[1:-1])
            if rest:
                raise TemplateError(f"unsupported sub-pipeline {tokens!r}")
            return value
        (tok,) = tokens
        if tok.startswith("`"):
            return tok[1:-1]
        if tok == "nil":
            return None
        if tok in ("true", "false"):
            return tok == "true"
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if tok.startswith("."):
            return self._field(tok)
        raise TemplateError(f"unsupported operand {tok!r}")

    def _field(self, chain: str) -> Any:
        value: Any = self.data
        walked = ""
        for name in chain[1:].split("."):
            if value is None:
                raise TemplateError(f"nil pointer evaluating {walked}.{name}")
            if not isinstance(value, Mapping):
                raise TemplateError(f"can't evaluate field {name} of {walked}")
            value = value.get(name)
            walked += "." + name
        return value


def _format(value: Any) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(text: str, data: Mapping[str, Any]) -> str:
    """Execute ``text`` as a Go template over ``data`` (Go field names as keys)."""
    ev = _Eval(data)
    out: list[str] = []

    def walk(nodes: list[_Node]) -> None:
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                out.append(_format(ev.pipeline(node.text)))
            else:
                walk(node.then if _truth(ev.pipeline(node.cond)) else node.other)

    walk(_parse(text))
    return "".join(out)


# JSON names of the LLMInferenceService fields whose Go name is not the capitalised
# JSON name.
_GO_NAMES = {"uri": "URI", "kvCacheOffloading": "KVCacheOffloading",
             "dataRPCPort": "DataRPCPort"}


def go_names(obj: Any) -> Any:
    """A JSON object with Go field names (``model.uri`` -> ``Model.URI``)."""
    if isinstance(obj, Mapping):
        return {_GO_NAMES.get(k, k[:1].upper() + k[1:]): go_names(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [go_names(v) for v in obj]
    return obj
