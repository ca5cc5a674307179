"""The shape of the package (the layout issue): imports only go down the layers below, so
there is no cycle and no backend reaches back into the Queue that owns it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / 'dbbasic_queue'

# Each module may import only modules of earlier layers.
LAYERS = [
    {'errors', 'liveness', 'version'},
    {'job', 'signals'},
    {'lineformat'},
    {'storage', 'validate', 'rules'},
    {'scan', 'editing', 'backend', 'schedule', 'journal'},
    {'claims', 'inspection'},
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


# The byte layout of a queue line (its separator, quoting, field positions and the regexes
# that read it) is written in lineformat.py; schedule.py's state file is a TSV of its own.
LINE_LAYOUT_MODULES = {'lineformat', 'schedule'}


def separators_written(path):
    """Line numbers of path's str or bytes constants that hold a tab (raw, or as a regex's
    \\t), and of its calls chr(9)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            text = node.value if isinstance(node.value, str) else node.value.decode('latin-1')
            if '\t' in text or '\\t' in text:
                found.append(node.lineno)
        elif (isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'chr'
              and node.args and getattr(node.args[0], 'value', None) == 9):
            found.append(node.lineno)
    return found


def test_the_line_layout_is_written_in_the_line_format_module_only():
    elsewhere = {path.name: lines for path in sorted(PACKAGE.glob('*.py'))
                 if path.stem not in LINE_LAYOUT_MODULES
                 for lines in [separators_written(path)] if lines}
    assert elsewhere == {}


def test_the_field_positions_name_the_columns():
    from dbbasic_queue import lineformat
    assert {name: getattr(lineformat, name.upper()) for name in lineformat.COLUMNS} == {
        name: i for i, name in enumerate(lineformat.COLUMNS)}


def test_a_rewrite_proves_a_storage_version_and_asks_nothing_else_of_it():
    # storage calls nothing it did not define: the Index a range rewrite is given is a
    # storage.Version, and the rename's checks use only what Version declares.
    from dbbasic_queue.scan import Index
    from dbbasic_queue.storage import Snapshot, Version
    assert issubclass(Index, Version) and issubclass(Snapshot, Version)
    used = set()
    for node in ast.walk(ast.parse((PACKAGE / 'storage.py').read_text())):
        if isinstance(node, ast.FunctionDef) and node.name in (
                '_replace', 'rewrite_ranges', '_copy_owner'):
            version = node.args.args[1 if node.name != '_copy_owner' else 2].arg
            used |= {attribute.attr for attribute in ast.walk(node)
                     if isinstance(attribute, ast.Attribute)
                     and getattr(attribute.value, 'id', None) == version}
    assert {'fd', 'offset', 'prove', 'proven_unchanged'} <= used <= set(dir(Version))


# The shape issue's bounds: no class a newcomer must hold whole is over 450 lines, and the
# README is the user's manual (the design notes are in docs/).
MAX_CLASS_LINES = 450
MAX_README_LINES = 550


def test_no_class_is_over_450_lines():
    long = [(path.name, node.name, node.end_lineno - node.lineno + 1)
            for path in sorted(PACKAGE.glob('*.py'))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert long == []


def test_the_readme_is_the_manual_and_links_the_design_notes():
    readme = (PACKAGE.parent / 'README.md').read_text()
    assert len(readme.splitlines()) <= MAX_README_LINES
    for notes in ('docs/design.md', 'docs/performance.md', 'docs/files.md'):
        assert f']({notes})' in readme and (PACKAGE.parent / notes).exists()


def test_the_contract_declares_what_its_callers_read_and_both_backends_set_it():
    from dbbasic_queue import Queue
    from dbbasic_queue.backend import Backend
    declared = {'kind', 'path', 'clock', 'lease_seconds', 'backoff_base_seconds'}
    assert declared <= set(Backend.__annotations__)
    import importlib.util
    locations = [PACKAGE.parent / 'no-such-dir' / 'queue.tsv']   # touches no disk
    if importlib.util.find_spec('rq'):   # the RQ extra: the suites of the file alone lack it
        locations.append('redis://127.0.0.1:1/0')                # connects to nothing yet
    for location in locations:
        backend = Queue(location).backend
        assert all(getattr(backend, name) is not None for name in declared), location
