"""The shape of the package (the layout issue): imports only go down the layers below, so
there is no cycle and no backend reaches back into the Queue that owns it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / 'dbbasic_queue'

# Each module may import only modules of earlier layers.
LAYERS = [
    {'errors', 'liveness', 'version'},
    {'job', 'signals', 'storage'},
    {'validate', 'rules', 'scan', 'tally', 'editing', 'backend'},
    {'claims', 'schedule'},
    {'file_backend', 'rq_backend'},
    {'queue'},
    {'web'},
    {'cli', '__init__'},
    {'__main__'},
]


def package_imports(path):
    """The package modules a module imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split('.')[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('dbbasic_queue'):
            found.add((node.module.split('.') + ['__init__'])[1])
    return found


def test_every_module_has_a_layer():
    modules = {path.stem for path in PACKAGE.glob('*.py')}
    assert modules == set().union(*LAYERS)


def test_imports_only_go_down_the_layers():
    layer_of = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward = [(path.stem, imported) for path in PACKAGE.glob('*.py')
              for imported in package_imports(path)
              if layer_of[imported] >= layer_of[path.stem]]
    assert upward == []


def test_no_backend_imports_the_queue_that_owns_it():
    for backend in ('file_backend', 'rq_backend', 'claims'):
        assert 'queue' not in package_imports(PACKAGE / f'{backend}.py')
