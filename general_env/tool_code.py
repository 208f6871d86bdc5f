"""Reading model-written code without running it: tool schemas from a tool module, and the static rules a
task's solution and verifier must follow.

A tool module is plain Python the tool-writing agent produced. Each public function whose first parameter is
`db` is a tool: `db` is the environment's database connection, given by the harness and never shown to the
model; the other parameters, with their type hints and the docstring's `Args:` section, become the tool's
schema in the OpenAI tools format. Annotations are read from the syntax tree and mapped through a closed set
of names (str, int, float, bool, list, dict, Optional, Literal, ...), so deriving a schema executes nothing.

A solution is `def solve(tools):` that reaches the world only through `tools.<name>(...)`; a verifier is a
set of `def check_<requirement>(state, answer) -> bool` functions over the final state (tables -> rows, see
`verifiers.state_hash.canonical_state`) and the answer. Both are checked here before they run (no imports
beyond a few pure modules, no file, process or introspection builtins, no underscored names) and then run in
the sandbox with the database out of reach (`general_env.harness`).
"""

from __future__ import annotations

import ast
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from agent.tools import parse_docstring, type_schema

DB_PARAMETER = "db"
SOLUTION_FUNCTION = "solve"
CHECK_PREFIX = "check_"
# Modules a solution or verifier may import: pure computation, no I/O.
PURE_MODULES = frozenset({"math", "statistics", "json", "re", "datetime", "itertools", "collections",
                          "functools", "decimal", "fractions", "string"})
FORBIDDEN_NAMES = frozenset({"open", "eval", "exec", "compile", "__import__", "globals", "locals", "vars",
                             "getattr", "setattr", "delattr", "breakpoint", "input", "memoryview", "help",
                             "exit", "quit", "db", "sqlite3", "os", "sys", "subprocess", "socket", "builtins"})
_ANNOTATION_NAMES: dict[str, Any] = {
    "str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict, "tuple": tuple,
    "None": type(None), "Any": Any, "Optional": Optional, "Union": Union, "Literal": Literal, "List": list,
    "Dict": dict, "Tuple": tuple, "object": object,
}


class ToolCodeError(ValueError):
    """Model-written code that breaks the rules; the message says what to fix."""


@dataclass
class ToolDefinition:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments (without `db`)

    def spec(self) -> dict[str, Any]:
        """The entry for a chat request's `tools` list."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass
class ToolModule:
    tools: list[ToolDefinition] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # functions left out, and why

    def names(self) -> list[str]:
        return [t.name for t in self.tools]


def parse_tool_module(source: str) -> ToolModule:
    """The tools a module defines, with their schemas; raises ToolCodeError when the module does not parse."""
    tree = _parse(source, "tool module")
    module = ToolModule()
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        try:
            module.tools.append(_tool_definition(node))
        except ToolCodeError as exc:
            module.problems.append(f"{node.name}: {exc}")
    return module


def _tool_definition(node: ast.FunctionDef) -> ToolDefinition:
    arguments = node.args
    if arguments.vararg or arguments.kwarg or arguments.posonlyargs:
        raise ToolCodeError("a tool takes named parameters only (no *args, **kwargs or positional-only)")
    names = [a.arg for a in arguments.args]
    if not names or names[0] != DB_PARAMETER:
        raise ToolCodeError(f"the first parameter must be `{DB_PARAMETER}` (the database connection)")
    description, argument_docs = parse_docstring(ast.get_docstring(node) or "")
    if not description:
        raise ToolCodeError("no docstring: the docstring's first line is what the model is told the tool does")
    parameters = arguments.args[1:] + arguments.kwonlyargs
    defaults = [None] * (len(arguments.args) - len(arguments.defaults)) + list(arguments.defaults)
    defaults = defaults[1:] + list(arguments.kw_defaults)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter, default in zip(parameters, defaults):
        if parameter.annotation is None:
            raise ToolCodeError(f"parameter `{parameter.arg}` has no type hint")
        schema = type_schema(annotation_type(parameter.annotation))
        if parameter.arg in argument_docs:
            schema["description"] = argument_docs[parameter.arg]
        if default is None:
            required.append(parameter.arg)
        else:
            value = _literal(default)
            if value is not None:
                schema["default"] = value
        properties[parameter.arg] = schema
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return ToolDefinition(node.name, description, schema)


def annotation_type(node: ast.expr) -> Any:
    """A type hint's syntax tree as a typing object, through a closed set of names (nothing is evaluated)."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return type(None)
        if isinstance(node.value, str):  # a string annotation
            return annotation_type(_parse(node.value, "annotation", mode="eval").body)
        raise ToolCodeError(f"unsupported type hint {ast.unparse(node)!r}")
    if isinstance(node, ast.Name):
        if node.id not in _ANNOTATION_NAMES:
            raise ToolCodeError(f"unsupported type hint {node.id!r} (use str, int, float, bool, list, dict, "
                                "Optional, Literal)")
        return _ANNOTATION_NAMES[node.id]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "typing":
        return annotation_type(ast.Name(node.attr))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return Union[annotation_type(node.left), annotation_type(node.right)]
    if isinstance(node, ast.Subscript):
        base = annotation_type(node.value)
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base is Literal:
            values = tuple(_literal(item) for item in items)
            if any(v is None for v in values):
                raise ToolCodeError("Literal[...] takes constants only")
            return Literal[values]
        args = tuple(annotation_type(item) for item in items)
        if base is Optional:
            return Optional[args[0]]
        if base is Union:
            return Union[args]
        return base[args if len(args) > 1 else args[0]]
    raise ToolCodeError(f"unsupported type hint {ast.unparse(node)!r}")


# ------------------------------------------------------------------------------------------ solution, checks


def check_solution(source: str, tool_names: typing.Collection[str]) -> list[str]:
    """What breaks the solution rules (empty: nothing): a `solve(tools)` function that uses only the given
    tools, through `tools.<name>`, and none of the database, files, processes or introspection."""
    tree = _parse(source, "solution")
    problems = _rule_problems(tree)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    solve = functions.get(SOLUTION_FUNCTION)
    if solve is None:
        problems.append(f"no `def {SOLUTION_FUNCTION}(tools):` function")
    elif [a.arg for a in solve.args.args] != ["tools"]:
        problems.append(f"`{SOLUTION_FUNCTION}` must take exactly one parameter, `tools`")
    known = set(tool_names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tools":
            if node.attr not in known:
                problems.append(f"line {node.lineno}: `tools.{node.attr}` is not a tool of this environment "
                                f"(tools: {', '.join(sorted(known)) or 'none'})")
    return list(dict.fromkeys(problems))


def used_tools(source: str) -> list[str]:
    """The tool names a solution calls through `tools.<name>`, in order of first use."""
    tree = _parse(source, "solution")
    found = [node.attr for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tools"]
    return list(dict.fromkeys(found))


def check_functions(source: str) -> tuple[list[str], list[str]]:
    """(names of the `check_*(state, answer)` functions, problems) of a verifier module."""
    tree = _parse(source, "verifier")
    problems = _rule_problems(tree)
    checks = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith(CHECK_PREFIX):
            if [a.arg for a in node.args.args] != ["state", "answer"]:
                problems.append(f"`{node.name}` must take exactly (state, answer)")
            else:
                checks.append(node.name)
    if not checks:
        problems.append(f"no `def {CHECK_PREFIX}<requirement>(state, answer) -> bool:` function")
    return checks, problems


def _rule_problems(tree: ast.Module) -> list[str]:
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] not in PURE_MODULES:
                    problems.append(f"line {node.lineno}: import of {module!r} (allowed: "
                                    f"{', '.join(sorted(PURE_MODULES))})")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            problems.append(f"line {node.lineno}: `{node.id}` is not allowed here")
        elif isinstance(node, ast.Name) and node.id.startswith("_"):
            problems.append(f"line {node.lineno}: underscored name `{node.id}` is not allowed")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            problems.append(f"line {node.lineno}: underscored attribute `.{node.attr}` is not allowed")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            problems.append(f"line {node.lineno}: `global`/`nonlocal` is not allowed")
    return problems


def _parse(source: str, what: str, mode: str = "exec") -> Any:
    try:
        return ast.parse(source, mode=mode)
    except SyntaxError as exc:
        raise ToolCodeError(f"the {what} does not parse: {exc.msg} (line {exc.lineno})") from None


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None
