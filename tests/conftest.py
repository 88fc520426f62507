"""Shared pytest setup: one intra-op thread (tiny models are far slower with two on 2 cores) unless a test is marked
``all_threads`` (a 64 px training is twice as fast with both), and GPU skipping."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(request):
    previous = torch.get_num_threads()
    if request.node.get_closest_marker("all_threads") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker); run on the device machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


