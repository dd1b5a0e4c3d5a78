"""The README's code blocks work.

Rule: every ```python block is executed (each in a fresh namespace, in an
empty working directory); a block that uses the GPU (it mentions ``cuda``)
only where CUDA is available. Every ```bash block must parse (``bash -n``) and
every command in it must be one of the kinds checked here, against the
project's real files and parsers:

- ``pip install .`` / ``pip install ".[extra]"``: the extras exist in pyproject.toml;
- ``python -m numba_bn ...`` / ``numba-bn ...``: the CLI's parser accepts the
  arguments; ``info``, ``--help`` and ``--version`` are also run;
- ``python examples/NAME.py ...``: the example exists and its parser accepts the arguments;
- ``python scripts/NAME.py ...``: the script exists and its parser accepts the arguments;
- ``python -m pytest [paths] [options]``: the paths exist (an option's own value is not a path);
- ``mpiexec -n K <one of the above>``: as that command.

Blocks in other languages (``text``) are not checked.
"""

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from numba_bn import cli
from numba_bn.bench.implementations import cuda_available, torch_cuda_available

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = [(match.group(1), match.group(2))
          for match in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.DOTALL | re.MULTILINE)]
PYTHON_BLOCKS = [code for language, code in BLOCKS if language == "python"]
BASH_BLOCKS = [code for language, code in BLOCKS if language in ("bash", "sh", "shell")]
COMMANDS = [shlex.split(line, comments=True) for code in BASH_BLOCKS for line in code.splitlines()]
COMMANDS = [words for words in COMMANDS if words]


def test_readme_has_blocks_of_both_kinds():
    assert PYTHON_BLOCKS and BASH_BLOCKS
    assert {language for language, _ in BLOCKS} <= {"python", "bash", "text"}


def _skip_unless_gpu_peers_present(code):
    """Skip a GPU block unless numba.cuda (GPU or simulator) and the libraries it uses work."""
    if not cuda_available():
        pytest.skip("this block needs numba.cuda (a GPU or NUMBA_ENABLE_CUDASIM=1)")
    if "import torch" in code and not (importlib.util.find_spec("torch") and torch_cuda_available()):
        pytest.skip("this block needs PyTorch with CUDA")
    if "import cupy" in code:
        pytest.importorskip("cupy")


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=lambda code: code.splitlines()[-1][:40])
def test_python_block_runs(code, tmp_path, monkeypatch):
    if "cuda" in code:
        _skip_unless_gpu_peers_present(code)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize("code", BASH_BLOCKS, ids=lambda code: code.splitlines()[0][:40])
def test_bash_block_parses(code):
    completed = subprocess.run(["bash", "-n"], input=code, text=True, capture_output=True, check=False)
    assert completed.returncode == 0, completed.stderr


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _ParserError(Exception):
    pass


def _accepts(parser: argparse.ArgumentParser, arguments):
    """Whether ``parser`` accepts ``arguments`` (``--help`` counts as accepted)."""
    def fail(message):
        raise _ParserError(message)

    for action_parser in [parser] + [
        sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values()
    ]:
        action_parser.error = fail
    try:
        parser.parse_args(arguments)
    except SystemExit as exit_:
        return exit_.code == 0
    except _ParserError as error:
        pytest.fail(f"{parser.prog} rejects {arguments}: {error}")
    return True


# Environment settings a README command may start with.
KNOWN_VARIABLES = {"NUMBA_ENABLE_CUDASIM", "NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR", "NUMBA_THREADING_LAYER"}


#: pytest options whose value is the next word: workers, keyword and marker expressions, plugins.
_PYTEST_OPTIONS_WITH_A_VALUE = {"-n", "-k", "-m", "-p"}


def _check_command(words):
    while words and re.fullmatch(r"\w+=\S*", words[0]):
        assert words[0].split("=")[0] in KNOWN_VARIABLES, f"unexpected setting {words[0]}"
        words = words[1:]
    program, arguments = words[0], words[1:]
    if program == "pip":
        assert arguments[0] == "install", words
        tomllib = pytest.importorskip("tomllib")  # Python 3.11+
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for target in arguments[1:]:
            match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
            if match is None:
                assert re.fullmatch(r"[\w.-]+(==[\w.+]+)?", target), f"unexpected pip target {target}"
            elif match.group(1):
                assert set(match.group(1).split(",")) <= set(extras), target
        return
    if program == "mpiexec":  # mpiexec -n K python ...: the program it starts must pass the same checks
        assert arguments[0] == "-n" and arguments[1].isdigit(), words
        program, arguments = arguments[2], arguments[3:]
        words = [program] + arguments
    if program == "numba-bn":
        words = ["python", "-m", "numba_bn"] + arguments
        program, arguments = "python", words[1:]
    assert program == "python", f"README command not covered by the rule: {' '.join(words)}"
    if arguments[:2] == ["-m", "numba_bn"]:
        rest = arguments[2:]
        assert _accepts(cli.build_parser(), cli._with_default_command(rest))
        if rest in (["info"], ["--help"], ["--version"]) or rest[-1:] == ["--help"]:
            completed = subprocess.run([sys.executable, "-m", "numba_bn", *rest], cwd=ROOT,
                                       capture_output=True, text=True, check=False)
            assert completed.returncode == 0, completed.stderr
        return
    if arguments[:2] == ["-m", "pytest"]:
        rest = iter(arguments[2:])
        for argument in rest:
            if argument in _PYTEST_OPTIONS_WITH_A_VALUE:
                next(rest)
            elif not argument.startswith("-"):
                assert (ROOT / argument.split("::")[0]).exists(), argument
        return
    script = ROOT / arguments[0]
    assert script.parent.name in ("examples", "scripts") and script.is_file(), f"no such script: {arguments[0]}"
    assert _accepts(_load(script).build_parser(), arguments[1:])


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words)[:60])
def test_bash_command_names_real_files_and_options(words):
    _check_command(words)


def test_benchmark_table_markers_present():
    assert README.count("<!-- bench-table:start -->") == 1 and README.count("<!-- bench-table:end -->") == 1
