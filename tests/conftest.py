import os
import shutil

import pytest
import torch

from fastpix.data.demo import write_demo_dataset


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)


@pytest.fixture(autouse=True, scope="session")
def _portable_cpu_defaults():
    """On a CPU fastpix defaults to bf16 where the CPU has it natively, and the Predictor to compiled graphs: the
    suite's results must not depend on the CPU it runs on, and compiling every tiny Predictor would take minutes.
    So here the CPU defaults are fp32 and eager; the tests of bf16 and of the compiled runtime ask for them."""
    from fastpix import runtime
    from fastpix.infer import plan

    with pytest.MonkeyPatch.context() as patch:  # session-wide: module-scoped fixtures build predictors too
        patch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
        patch.setitem(plan.AUTO, "cpu", "eager")
        yield


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small demo data set: 32×32 halves, 8 train / 3 val / 3 test pairs."""
    root = str(tmp_path_factory.mktemp("tiny_data"))
    return write_demo_dataset(root, 32, {"train": 8, "val": 3, "test": 3})


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): their convolutions gain
    nothing from a second intra-op thread, and on a busy 2-core machine two threads waiting on each other run
    several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """8 demo pairs (32×32 halves) per test module, never changed: `data` hands each test its own copy."""
    return write_demo_dataset(str(tmp_path_factory.mktemp("pairs")), 32, {"train": 8})


@pytest.fixture
def data(pristine, tmp_path):
    """A private copy of `pristine`: the cache and stream tests change files and write cache folders in it."""
    return shutil.copytree(pristine, str(tmp_path / "data"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory):
    """fastpix's user cache directory (default decode caches, demo data) in a temporary folder: the tests never
    write into the user's ~/.cache."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("user_cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none present)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
