"""The structure rules of docs/design.md ("Layers"), enforced: the import layers (import-linter contracts in
pyproject.toml) and no function over 80 lines outside kernels/."""
import ast
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


def test_import_contracts_hold(tmp_path):
    """lint-imports reads the package from disk, and fastpix.kernels and fastpix.bench_suites are the kernels/ and
    bench/suites/ folders mapped in by setup.py: the check runs on a copy of the source laid out as the installed
    package is."""
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert lint, "import-linter comes with the [test] extra: pip install -e '.[test]'"
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    shutil.copytree(ROOT / "fastpix", tmp_path / "fastpix", ignore=ignore)
    shutil.copytree(ROOT / "kernels", tmp_path / "fastpix" / "kernels", ignore=ignore)
    shutil.copytree(ROOT / "bench" / "suites", tmp_path / "fastpix" / "bench_suites", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    done = subprocess.run([lint, "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "kept" in done.stdout, done.stdout


def long_functions(paths, root=ROOT):
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    yield f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)"


def test_no_function_over_80_lines_outside_kernels():
    paths = sorted((ROOT / "fastpix").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
    assert list(long_functions(paths)) == []


def test_the_length_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    want = [f"long.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"]
    assert list(long_functions([tmp_path / "long.py"], tmp_path)) == want
