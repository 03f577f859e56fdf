"""The structure rules of docs/design.md ("Layers"), enforced: the import layers (import-linter contracts in
pyproject.toml), no function over 80 lines outside kernels/, no module of fastpix/ over 450 lines; and the house
tooling: ruff (lint and format) and mypy clean, comments that cite only documents in the repository, and no dates."""

import ast
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450
# What ruff lints and formats (pyproject.toml's [tool.ruff] says how).
LINTED = ["fastpix", "kernels", "bench", "tests", "setup.py"]
# Design notes that were never part of the repository, and a date as a comment would write it: comments cite
# docs/design.md, docs/benchmarks.md, docs/reference-compat.md or docs/evaluation.md by section, and dates belong
# in docs/benchmarks.md beside their measurements.
FOREIGN_CITATION = re.compile(r"\b(architecture|performance|pix2pix)\.md\b")
DATE = re.compile(r"\b202\d-[01]\d-[0-3]\d\b")


def tool(name):
    """A console script of the [test] extra, beside this interpreter (a venv's bin/) or on PATH."""
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    assert path, f"{name} comes with the [test] extra: pip install -e '.[test]'"
    return path


def installed_layout(folder):
    """A copy of the source laid out as the installed package is: fastpix.kernels and fastpix.bench_suites are the
    kernels/ and bench/suites/ folders that setup.py maps in, which tools reading the package from disk cannot see."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    shutil.copytree(ROOT / "fastpix", folder / "fastpix", ignore=ignore)
    shutil.copytree(ROOT / "kernels", folder / "fastpix" / "kernels", ignore=ignore)
    shutil.copytree(ROOT / "bench" / "suites", folder / "fastpix" / "bench_suites", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", folder)
    return folder


def test_import_contracts_hold(tmp_path):
    lint = tool("lint-imports")
    installed_layout(tmp_path)
    done = subprocess.run(
        [lint, "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
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


def test_no_module_of_fastpix_over_450_lines():
    """One concept per module: a module past this length holds two (kernels/ is exempt, as for functions)."""
    long = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in sorted((ROOT / "fastpix").rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


def test_ruff_check_is_clean():
    done = subprocess.run([tool("ruff"), "check", "--no-cache", *LINTED], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_applied():
    done = subprocess.run(
        [tool("ruff"), "format", "--check", "--no-cache", *LINTED], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean(tmp_path):
    """mypy on fastpix as installed, kernels/ as fastpix.kernels; pyproject.toml's [tool.mypy] says how strict."""
    installed_layout(tmp_path / "src")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path / "src",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def comments_and_docstrings(path):
    """(line, text) of each comment and docstring of a Python file."""
    source = path.read_text()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                yield node.body[0].lineno, docstring


def foreign_citations_and_dates(paths, root=ROOT):
    for path in paths:
        for line, text in comments_and_docstrings(path):
            for found in (m.group(0) for pattern in (FOREIGN_CITATION, DATE) for m in pattern.finditer(text)):
                yield f"{path.relative_to(root)}:{line} {found}"


def test_comments_cite_the_repositorys_docs_and_hold_no_date():
    paths = [p for folder in ("fastpix", "kernels", "bench", "tests") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert list(foreign_citations_and_dates(paths)) == []


def test_the_comment_check_finds_a_citation_and_a_date(tmp_path):
    (tmp_path / "m.py").write_text('"""See performance.md."""\nx = "pix2pix.md"  # measured 2026-12-01\n')
    found = list(foreign_citations_and_dates([tmp_path / "m.py"], tmp_path))
    assert found == ["m.py:2 2026-12-01", "m.py:1 performance.md"]
