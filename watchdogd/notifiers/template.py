"""Notification bodies from a user's template: Jinja2's sandbox, rendering JSON.

The sandbox refuses attribute access to internals (``__class__``, ``mro``,
``func_globals``...), so a config author, or whoever can change one, cannot
reach Python through a template. Values are plain JSON data; ``tojson``
writes any of them as a JSON value (quoted and escaped), which is how a
string should enter the body. The render must parse as JSON.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

MAX_BODY = 1 << 20
"""A rendered body larger than this is refused: no receiver wants a megabyte of notification."""


class TemplateError(ValueError):
    """A template that does not compile, fails to render, or renders something that is not JSON."""


@lru_cache(maxsize=64)
def compile_template(source: str) -> Any:
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False, "default": _unjsonable}
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template line {exc.lineno}: {exc.message}") from None


def _unjsonable(value: Any) -> Any:
    """``tojson`` of an undefined variable names it, instead of failing on an unknown type."""
    from jinja2 import Undefined

    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    raise TypeError(f"a {type(value).__name__} cannot be written as JSON")


def render_json(source: str, variables: dict[str, Any]) -> bytes:
    """The body ``source`` renders with ``variables``, checked to be JSON; ``TemplateError`` if not."""
    from jinja2 import TemplateError as JinjaError
    from jinja2.exceptions import SecurityError

    template = compile_template(source)
    try:
        text: str = template.render(**variables)
    except SecurityError as exc:
        raise TemplateError(f"template refused by the sandbox: {exc}") from None
    except (JinjaError, TypeError) as exc:
        raise TemplateError(f"template: {exc}") from None
    if len(text) > MAX_BODY:
        raise TemplateError(f"template rendered {len(text)} characters, over {MAX_BODY}")
    try:
        json.loads(text)
    except ValueError as exc:
        raise TemplateError(f"template did not render JSON: {exc}") from None
    return text.encode()
