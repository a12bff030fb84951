"""Docker image references, and the ``images`` allow-list patterns that match them.

A reference is ``[REGISTRY/]PATH[:TAG][@DIGEST]``. As Docker reads it, the first
``/``-separated part is the registry when it holds a ``.`` or a ``:`` or is
``localhost``; otherwise the image is on Docker Hub (``docker.io``), where a
one-part path is under ``library/``. References and patterns are normalized that
way before they are compared: ``api``, ``library/api`` and
``docker.io/library/api`` name one repository.

A pattern matches a reference when

- the registries are equal (no wildcard is allowed in a pattern's registry: a
  pattern names the registry it lets images come from, letter for letter, so
  ``registry.example.com`` never matches ``registry.example.com.evil.io``);
- the paths have as many parts, each matching its pattern part, where ``*``
  stands for any characters and ``?`` for one, never a ``/`` (``team/*`` matches
  ``team/api``, not ``team/api/x``; ``api`` matches ``api``, not ``api-evil``);
- the pattern's tag, if it has one, matches the reference's tag with the same
  wildcards (a reference with neither tag nor digest is ``latest``; one pinned by
  digest alone has no tag and matches only patterns without a tag);
- the pattern's digest, if it has one, equals the reference's.

An image ID (``sha256:<64 hex>``) has no repository and matches no pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_REGISTRY = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?")
_PART = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_PART_PATTERN = re.compile(r"[a-z0-9*?]+(?:(?:[._]|__|-+)[a-z0-9*?]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_TAG_PATTERN = re.compile(r"[A-Za-z0-9_*?][A-Za-z0-9_.*?-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed reference (or pattern): ``registry/path:tag@digest``, normalized."""

    registry: str
    path: tuple[str, ...]
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        return f"{self.registry}/{'/'.join(self.path)}"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        return self.repository + tag + (f"@{self.digest}" if self.digest else "")


def is_image_id(text: str) -> bool:
    """``sha256:<64 hex>`` (or the bare 64 hex digits): an image's own ID, not a name."""
    return _IMAGE_ID.fullmatch(text) is not None


def _split(text: str, pattern: bool) -> Reference:
    """Parse ``text``; ValueError saying what is wrong."""
    if not text or text != text.strip():
        raise ValueError("an image reference cannot be empty or have surrounding spaces")
    name, at, digest = text.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ValueError(f"'{digest}' is not a digest (algorithm:hex)")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag: str | None = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not (_TAG_PATTERN if pattern else _TAG).fullmatch(tag):
            raise ValueError(f"'{tag}' is not a valid tag")
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, parts = first.lower(), rest.split("/")
        if "*" in registry or "?" in registry or not _REGISTRY.fullmatch(registry):
            raise ValueError(f"'{first}' is not a registry host[:port] (no wildcards in a registry)")
    else:
        registry, parts = HUB, name.split("/")
    if registry in _HUB_ALIASES:
        registry = HUB
        if len(parts) == 1:
            parts = ["library", *parts]
    for part in parts:
        if not (_PART_PATTERN if pattern else _PART).fullmatch(part):
            raise ValueError(f"'{part}' is not a repository path component (lowercase letters, digits, ._-)")
    if not at and tag is None and not pattern:
        tag = "latest"
    return Reference(registry, tuple(parts), tag, digest if at else None)


def parse(text: str) -> Reference | None:
    """The reference ``text`` names, normalized; None for an image ID or anything Docker would refuse."""
    if is_image_id(text):
        return None
    try:
        return _split(text, pattern=False)
    except ValueError:
        return None


def parse_pattern(text: str) -> Reference:
    """An allow-list pattern; ValueError saying what is wrong (the config's message)."""
    if is_image_id(text):
        raise ValueError("an image ID is not a pattern: name the repository")
    return _split(text, pattern=True)


def _glob(pattern: str, text: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def matches(pattern: Reference, ref: Reference) -> bool:
    """Does ``ref`` match ``pattern`` (see the module docstring)?"""
    if pattern.registry != ref.registry or len(pattern.path) != len(ref.path):
        return False
    if not all(_glob(p, r) for p, r in zip(pattern.path, ref.path, strict=True)):
        return False
    if pattern.tag is not None and (ref.tag is None or not _glob(pattern.tag, ref.tag)):
        return False
    return pattern.digest is None or pattern.digest == ref.digest


def allowed(text: str, patterns: Iterable[str]) -> str | None:
    """The first pattern of ``patterns`` that allows reference ``text``; None when none does."""
    ref = parse(text)
    if ref is None:
        return None
    for raw in patterns:
        try:
            if matches(parse_pattern(raw), ref):
                return raw
        except ValueError:
            continue  # the config validated them; a bad one allows nothing
    return None


def same_image_name(a: str, b: str) -> bool:
    """Do ``a`` and ``b`` name one repository, tag and digest (``app:v1``, ``docker.io/library/app:v1``)?"""
    if a == b:
        return True
    ra, rb = parse(a), parse(b)
    return ra is not None and ra == rb
