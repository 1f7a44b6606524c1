"""A Dask ``LocalCluster`` of 2 one-thread worker processes, shared by the engine tests."""

import pytest


@pytest.fixture(scope="session")
def client():
    pytest.importorskip("distributed")
    from overparam.engine.distributed import close_client, open_client

    client = open_client(workers=2)
    yield client
    close_client(client)
