"""Shared pytest fixtures."""
import pytest

from src.demo_data import write_demo_data


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The demo digits written once per session: {"cifar10": .../cifar-10-batches-bin, "imagefolder": ...}."""
    return write_demo_data(str(tmp_path_factory.mktemp("demo_data")))
