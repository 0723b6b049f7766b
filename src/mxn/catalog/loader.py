"""Read a catalogue YAML file: env interpolation, validation, errors that name the file and line."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydantic import ValidationError

from mxn.catalog.schema import CHIP_TYPES, CatalogFile, ModerationSpec

_UNION_TAG = re.compile(r"^(bool|[A-Z]\w*Spec)$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class CatalogError(Exception):
    """An invalid catalogue; str() is the message an operator sees."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")
        self.path, self.line = path, line


def load_catalog(path: str | os.PathLike[str]) -> CatalogFile:
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(name, None, f"cannot read: {exc.strerror}")
    return parse_catalog(text, name)


def parse_catalog(text: str, name: str = "<catalog>") -> CatalogFile:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return CatalogFile()
        _interpolate(root, name)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise CatalogError(name, line, f"not valid YAML: {exc.problem}")
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise CatalogError(name, 1, "the top level must be a mapping with chips:, models:, deployments:")
    try:
        spec = CatalogFile.model_validate(data)
    except ValidationError as exc:
        # The deepest error says most; a union's member names (`bool`, `ModerationSpec`) are not in the file.
        err = max(exc.errors(), key=lambda e: len(e["loc"]))
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
        field = ".".join(str(p) for p in loc) or "(top level)"
        raise CatalogError(name, _line_of(root, loc), f"{field}: {err['msg']}")
    for where, message in _reference_errors(spec):
        raise CatalogError(name, _line_of(root, where), message)
    base = Path(name).parent if not name.startswith("<") else Path.cwd()
    for where, rules in _rule_sets(spec):
        for i, file in enumerate(rules.keyword_files):
            try:
                lines = (base / file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise CatalogError(name, _line_of(root, (*where, "keyword_files", i)), f"cannot read {file}: {reason}")
            rules.keywords += [w.strip() for w in lines if w.strip() and not w.startswith("#")]
        rules.keyword_files = []
    return spec


def _rule_sets(spec: CatalogFile) -> Iterator[tuple[tuple[object, ...], ModerationSpec]]:
    if spec.moderation is not None:
        yield ("moderation",), spec.moderation
    for i, d in enumerate(spec.deployments):
        if d.own_rules is not None:
            yield ("deployments", i, "moderation"), d.own_rules


def _interpolate(node: yaml.Node, name: str) -> None:
    """`${VAR}` and `${VAR:-default}` inside string scalars, before construction."""
    for scalar in _scalars(node):
        if "${" not in scalar.value:
            continue

        def sub(m: re.Match[str], scalar: yaml.ScalarNode = scalar) -> str:
            value = os.environ.get(m.group(1), m.group(2))
            if value is None:
                raise CatalogError(name, scalar.start_mark.line + 1, f"environment variable {m.group(1)} is not set")
            return value

        scalar.value = _VAR.sub(sub, scalar.value)


def _scalars(node: yaml.Node) -> Iterator[yaml.ScalarNode]:
    if isinstance(node, yaml.ScalarNode):
        yield node
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _scalars(item)
    elif isinstance(node, yaml.MappingNode):
        for _key, value in node.value:
            yield from _scalars(value)


def _line_of(node: yaml.Node, loc: tuple[object, ...]) -> int:
    """The line of the deepest node that `loc` (a pydantic error location) reaches."""
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _reference_errors(spec: CatalogFile) -> Iterator[tuple[tuple[object, ...], str]]:
    chips = {c.id for c in spec.chips} | set(CHIP_TYPES)
    models = {m.name for m in spec.models}
    seen_models: set[str] = set()
    for i, m in enumerate(spec.models):
        if m.name in seen_models:
            yield ("models", i, "name"), f"model '{m.name}' is listed twice"
        seen_models.add(m.name)
    cells: set[tuple[str, str]] = set()
    for i, d in enumerate(spec.deployments):
        if d.model not in models:
            yield ("deployments", i, "model"), f"model '{d.model}' is not in `models:`"
        if d.chip not in chips and d.chip != "auto":
            yield ("deployments", i, "chip"), f"chip '{d.chip}' is not in `chips:` nor a known chip type"
        if (d.model, d.chip) in cells:
            yield ("deployments", i), f"deployment {d.model}@{d.chip} is listed twice"
        cells.add((d.model, d.chip))
