"""The package's import graph keeps its layers (mmcof_gen/layers.py, the table docs/architecture.md shows): no
module imports one of a higher layer, at module level, inside a function or under `if TYPE_CHECKING:`, and
no module imports one that imports it back."""

import ast
from pathlib import Path

import mmcof_gen
from mmcof_gen import layers

PACKAGE = Path(mmcof_gen.__file__).parent
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str], name: str | None = None, typing: bool = True) -> set[str]:
    """The package's modules that `path` (the module `name`) imports anywhere; under `if TYPE_CHECKING:` too
    unless `typing` is False."""
    name = name or module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set() if typing else {
        id(node) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body for node in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return (found & modules) - {name}


def package_graph(extra: dict[str, Path] | None = None, typing: bool = True) -> dict[str, set[str]]:
    """Module -> the package's modules it imports; `extra` adds modules (name -> file) the package does not hold."""
    files = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))} | (extra or {})
    return {name: imported(path, set(files), name, typing) for name, path in files.items()}


def relative(module: str) -> str:
    return module.removeprefix("mmcof_gen").removeprefix(".")


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer into a higher one, as "importer (layer) -> imported (layer)"."""
    def layer(module: str) -> int:
        return layers.layer_of(relative(module))

    return [f"{module} ({layers.LAYERS[layer(module)][0]}) -> {child} ({layers.LAYERS[layer(child)][0]})"
            for module, children in sorted(graph.items()) for child in sorted(children) if layer(child) > layer(module)]


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, str] = {}
    trail: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        trail.append(module)
        for child in sorted(graph[module]):
            if state.get(child) == "open":
                return trail[trail.index(child):] + [child]
            if child not in state and (found := visit(child)):
                return found
        state[module] = "done"
        trail.pop()
        return None

    return next((found for module in sorted(graph) if module not in state and (found := visit(module))), None)


def test_every_module_is_in_one_layer_and_no_import_goes_up():
    graph = package_graph()
    assert len(graph) > 60 and "mmcof_gen.models.chat.config" in graph["mmcof_gen.config"]  # the walk sees imports
    assert "mmcof_gen.agent.vlm_search" in graph["mmcof_gen.agent.candidates"]  # and those under TYPE_CHECKING
    for module in graph:
        assert sum(layers.layer_of(relative(module)) == index for index in range(len(layers.LAYERS))) == 1
    assert upward(graph) == []


def test_a_module_outside_every_layer_is_named():
    try:
        layers.layer_of("newmodule")
    except KeyError as exc:
        assert "newmodule is in no layer of mmcof_gen/layers.py" in str(exc)
    else:
        raise AssertionError("a module in no layer was given one")


def test_an_upward_import_fails_the_check_wherever_it_is_written(tmp_path):
    probe = tmp_path / "probe.py"  # a module of the models layer that would know the pipeline config
    for body in ("from mmcof_gen.config import PipelineConfig\n",
                 "def build():\n    from mmcof_gen import config\n",
                 "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mmcof_gen.config import PipelineConfig\n"):
        probe.write_text(body, encoding="utf-8")
        graph = package_graph({"mmcof_gen.models.probe": probe})
        assert upward(graph) == ["mmcof_gen.models.probe (models) -> mmcof_gen.config (configuration)"]


def test_no_import_cycles_in_the_package():
    runtime, graph = package_graph(typing=False), package_graph()
    assert cycle(runtime) is None
    for module, children in graph.items():  # a cycle closed only under TYPE_CHECKING is named in layers.py
        graph[module] = {child for child in children if child in runtime[module]
                         or frozenset({relative(module), relative(child)}) not in layers.TYPING_CYCLES}
    assert cycle(graph) is None


def test_a_cycle_is_found():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_architecture_doc_shows_the_layer_table():
    assert layers.markdown() in ARCHITECTURE.read_text(encoding="utf-8"), (
        "docs/architecture.md: paste the table `python -m mmcof_gen.layers` prints")
