"""The public API documents itself: NumPy-style docstrings that match the signatures.

Every public name and public method must have a docstring whose "Parameters"
section names exactly its parameters, a "Returns" (or, for generators,
"Yields") section when it returns something, and type hints that resolve.
The examples in the docstrings run as doctests, so they stay true.
"""

import doctest
import importlib
import inspect
import pkgutil
import re
import typing

import pytest

import numba_bn
import numba_bn.bench
from numba_bn import _grad_mode, _precompile, _stats, fold, functional, modules, norm_functional, norm_modules
from numba_bn.cuda import stream as _stream

MODULE_CLASSES = (numba_bn.BatchNorm1d, numba_bn.BatchNorm2d, numba_bn.BatchNorm3d)
MODULE_METHODS = (
    "forward", "__call__", "backward", "train", "eval", "to", "cpu", "cuda",
    "reset_running_stats", "reset_parameters", "state_dict", "load_state_dict", "extra_repr", "set_running_stats",
)
FUNCTIONS = (
    numba_bn.batch_norm, numba_bn.batch_stats, numba_bn.cuda_stream, numba_bn.precompile, numba_bn.is_grad_enabled,
    numba_bn.channel_stats, numba_bn.fold_batchnorm, numba_bn.group_norm, numba_bn.instance_norm, numba_bn.layer_norm,
)
#: Other public classes: every public method and property documented.
OTHER_CLASSES = (numba_bn.ChannelStats, numba_bn.SyncBatchNorm)
PUBLIC_NAMES = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "batch_norm", "batch_stats", "cuda_stream", "is_grad_enabled",
    "no_grad", "precompile", "__version__", "ChannelStats", "channel_stats", "SyncBatchNorm",
    "fold_batchnorm", "GroupNorm", "group_norm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "instance_norm",
    "LayerNorm", "layer_norm",
]
#: Modules whose docstrings (and examples) are checked.
DOCUMENTED_MODULES = [
    numba_bn, modules, functional, _stream, _grad_mode, _precompile, _stats, fold, norm_modules, norm_functional,
]

#: The input layouts each class must state: channels first and channels last.
DOCUMENTED_SHAPES = {
    numba_bn.BatchNorm1d: ("(N, C)", "(N, C, L)", "(N, L, C)"),
    numba_bn.BatchNorm2d: ("(N, C, H, W)", "(N, H, W, C)"),
    numba_bn.BatchNorm3d: ("(N, C, D, H, W)", "(N, D, H, W, C)"),
}


# ------------------------------------------------------------------ the checker


def sections(doc):
    """``{title: body}`` of a cleaned NumPy-style docstring (a title underlined with dashes)."""
    lines = doc.splitlines()
    starts = [
        i for i in range(len(lines) - 1)
        if lines[i].strip() and re.fullmatch(r"-{3,}", lines[i + 1]) and len(lines[i + 1]) == len(lines[i])
    ]
    found = {}
    for start, end in zip(starts, starts[1:] + [len(lines)]):
        found[lines[start]] = "\n".join(lines[start + 2:end])
    return found


def entry_names(body):
    """Names of the entries of a Parameters/Attributes section: ``a, b : type`` lines at column 0."""
    names = set()
    for line in body.splitlines():
        if line and not line[0].isspace():
            names.update(name.strip().lstrip("*") for name in line.split(" : ")[0].split(","))
    return names


def _parameters(signature):
    names = list(signature.parameters)
    return names[1:] if names[:1] == ["self"] else names


def docstring_problems(obj):
    """What is missing or wrong in ``obj``'s docstring and type hints (empty: nothing)."""
    doc = inspect.getdoc(obj)
    if not doc:
        return ["no docstring"]
    problems = []
    if not doc.splitlines()[0].rstrip().endswith("."):
        problems.append("the summary line is not a sentence ending with '.'")
    found = sections(doc)
    signature = inspect.signature(obj)
    parameters = _parameters(signature)
    if parameters:
        if "Parameters" not in found:
            problems.append("no Parameters section")
        else:
            documented = entry_names(found["Parameters"])
            if set(parameters) - documented:
                problems.append(f"parameters not documented: {sorted(set(parameters) - documented)}")
            if documented - set(parameters):
                problems.append(f"documented parameters that do not exist: {sorted(documented - set(parameters))}")
    elif "Parameters" in found:
        problems.append("a Parameters section for a callable without parameters")
    unannotated = [name for name in parameters if signature.parameters[name].annotation is inspect.Parameter.empty]
    if unannotated:
        problems.append(f"parameters without type hints: {unannotated}")
    if inspect.isclass(obj):
        return problems
    returned = signature.return_annotation
    if returned is inspect.Signature.empty:
        problems.append("no return type hint")
    else:
        section = "Yields" if inspect.isgeneratorfunction(inspect.unwrap(obj)) else "Returns"
        returns_something = returned not in (None, "None")
        if returns_something and section not in found:
            problems.append(f"no {section} section")
        if not returns_something and section in found:
            problems.append(f"a {section} section for a callable that returns None")
    return problems


# ------------------------------------------------------------- the checker works


def test_checker_flags_missing_and_wrong_docs():
    def undocumented(x: int) -> int:
        return x

    def unannotated(x):
        """Return ``x``.

        Parameters
        ----------
        x : int
            Any number.

        Returns
        -------
        int
        """
        return x

    def incomplete(x: int, y: int) -> int:
        """Add ``x`` and ``y``

        Parameters
        ----------
        x, z : int
            The numbers.
        """
        return x + y

    def complete(x: int, *, y: int = 1) -> int:
        """Add ``x`` and ``y``.

        Parameters
        ----------
        x : int
            A number.
        y : int, default 1
            Another number.

        Returns
        -------
        int
            The sum.
        """
        return x + y

    assert docstring_problems(undocumented) == ["no docstring"]
    assert docstring_problems(unannotated) == ["parameters without type hints: ['x']", "no return type hint"]
    assert docstring_problems(incomplete) == [
        "the summary line is not a sentence ending with '.'",
        "parameters not documented: ['y']",
        "documented parameters that do not exist: ['z']",
        "no Returns section",
    ]
    assert docstring_problems(complete) == []


# ---------------------------------------------------------------- the public API


def test_all_lists_exactly_the_public_api():
    assert sorted(numba_bn.__all__) == sorted(PUBLIC_NAMES)
    for name in numba_bn.__all__:
        assert getattr(numba_bn, name) is not None


@pytest.mark.parametrize("module", DOCUMENTED_MODULES, ids=lambda m: m.__name__)
def test_module_docstrings(module):
    assert module.__doc__ and module.__doc__.strip().splitlines()[0].endswith(".")


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_function_docstrings(function):
    assert docstring_problems(function) == []
    assert "Examples" in sections(inspect.getdoc(function))


def test_no_grad_docstring():
    doc = inspect.getdoc(numba_bn.no_grad)
    assert {"Examples"} <= set(sections(doc)) and "backward" in doc


@pytest.mark.parametrize("cls", MODULE_CLASSES, ids=lambda c: c.__name__)
def test_class_docstrings(cls):
    assert docstring_problems(cls) == []
    doc = inspect.getdoc(cls)
    found = sections(doc)
    assert {"Attributes", "Raises", "Notes", "Examples"} <= set(found)
    # Every attribute a new module has (the public ones) is documented.
    public = {name for name in vars(cls(3)) if not name.startswith("_")}
    assert public - entry_names(found["Attributes"]) == set()
    for shape in DOCUMENTED_SHAPES[cls]:
        assert shape in doc, shape


@pytest.mark.parametrize("name", MODULE_METHODS)
@pytest.mark.parametrize("cls", MODULE_CLASSES, ids=lambda c: c.__name__)
def test_method_docstrings(cls, name):
    assert docstring_problems(getattr(cls, name)) == []


@pytest.mark.parametrize("cls", MODULE_CLASSES, ids=lambda c: c.__name__)
def test_no_public_method_is_left_out(cls):
    public = {name for name, value in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}
    assert public <= set(MODULE_METHODS)


@pytest.mark.parametrize("cls", OTHER_CLASSES, ids=lambda c: c.__name__)
def test_other_classes_document_their_methods(cls):
    assert docstring_problems(cls) == [] and "Examples" in sections(inspect.getdoc(cls))
    for name, value in vars(cls).items():
        if name.startswith("_"):  # __init__ is documented by the class docstring
            continue
        if isinstance(value, property):
            assert inspect.getdoc(value), name
        elif isinstance(value, (staticmethod, classmethod)) or inspect.isfunction(value):
            assert docstring_problems(getattr(cls, name)) == [], name


@pytest.mark.parametrize("cls", MODULE_CLASSES, ids=lambda c: c.__name__)
def test_type_hints_resolve_and_cover_the_attributes(cls):
    for name in MODULE_METHODS + ("__init__",):
        typing.get_type_hints(getattr(cls, name))
    hinted = typing.get_type_hints(cls)
    public = {name for name in vars(cls(3)) if not name.startswith("_")}
    assert public - set(hinted) == set()


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_function_type_hints_resolve(function):
    hints = typing.get_type_hints(function)
    assert set(hints) == set(inspect.signature(function).parameters) | {"return"}


def test_command_line_and_benchmark_helpers_have_docstrings():
    names = ["numba_bn.cli"] + [
        f"numba_bn.bench.{info.name}" for info in pkgutil.iter_modules(numba_bn.bench.__path__)
    ]
    undocumented = []
    for module_name in names:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != "jax":
                raise
            continue  # numba_bn.bench.jax_batchnorm is JAX code: checked where jax is installed
        for name, value in vars(module).items():
            defined_here = getattr(value, "__module__", None) == module_name
            if not name.startswith("_") and defined_here and (inspect.isfunction(value) or inspect.isclass(value)):
                if not inspect.getdoc(value):
                    undocumented.append(f"{module_name}.{name}")
    assert undocumented == []


# ------------------------------------------------------------------- examples


@pytest.mark.parametrize("module", DOCUMENTED_MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    # The CUDA examples are marked +SKIP; everything else runs on the CPU.
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, module.__name__):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0
    assert results.attempted > 0
