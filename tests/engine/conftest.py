"""A Dask ``LocalCluster`` of 2 one-thread worker processes for the engine tests that use one.

Module-scoped: the cluster and its client threads are gone before other modules fork processes.
"""

import pytest


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from overparam.engine.distributed import close_client, open_client

    client = open_client(workers=2)
    yield client
    close_client(client)
