"""Connecting and namespace management with the real temporalio SDK against a 3-node cluster."""

import uuid

import pytest
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    GetSystemInfoRequest,
    ListNamespacesRequest,
    RegisterNamespaceRequest,
    UpdateNamespaceRequest,
)
from temporalio.api.namespace.v1 import UpdateNamespaceInfo
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from google.protobuf.duration_pb2 import Duration


async def test_default_namespace_exists_on_every_node(cluster):
    for addr in cluster:
        c = await Client.connect(addr)
        r = await c.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))
        assert r.namespace_info.name == "default"
        assert len(r.namespace_info.id) == 36


async def test_system_info_is_honest(client):
    r = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    assert r.server_version.startswith("norn-")
    assert not r.capabilities.supports_schedules
    assert not r.capabilities.eager_workflow_start


async def test_register_describe_list_update(cluster):
    name = f"ns-{uuid.uuid4().hex[:8]}"
    c1 = await Client.connect(cluster[1])
    await c1.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=name,
            description="orders",
            owner_email="ops@example.com",
            workflow_execution_retention_period=Duration(seconds=86400),
        )
    )
    # Registered through node 2, visible through node 3 (linearizable reads on the leader).
    c2 = await Client.connect(cluster[2])
    r = await c2.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=name))
    assert r.namespace_info.description == "orders"
    assert r.config.workflow_execution_retention_ttl.seconds == 86400
    by_id = await c2.workflow_service.describe_namespace(DescribeNamespaceRequest(id=r.namespace_info.id))
    assert by_id.namespace_info.name == name

    names = [n.namespace_info.name for n in (await c2.workflow_service.list_namespaces(ListNamespacesRequest())).namespaces]
    assert "default" in names and name in names

    await c1.workflow_service.update_namespace(
        UpdateNamespaceRequest(namespace=name, update_info=UpdateNamespaceInfo(description="orders v2", owner_email="ops@example.com"))
    )
    r = await c2.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=name))
    assert r.namespace_info.description == "orders v2"


async def test_list_pages(client):
    for _ in range(3):
        await client.workflow_service.register_namespace(RegisterNamespaceRequest(namespace=f"page-{uuid.uuid4().hex[:8]}"))
    seen, token = [], b""
    while True:
        r = await client.workflow_service.list_namespaces(ListNamespacesRequest(page_size=2, next_page_token=token))
        assert len(r.namespaces) <= 2
        seen += [n.namespace_info.name for n in r.namespaces]
        token = r.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) >= 4


async def test_errors_use_the_codes_sdks_expect(client):
    with pytest.raises(RPCError) as e:
        await client.workflow_service.register_namespace(RegisterNamespaceRequest(namespace="default"))
    assert e.value.status == RPCStatusCode.ALREADY_EXISTS
    with pytest.raises(RPCError) as e:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="no-such-namespace"))
    assert e.value.status == RPCStatusCode.NOT_FOUND
    with pytest.raises(RPCError) as e:
        await client.workflow_service.register_namespace(RegisterNamespaceRequest(namespace="has space"))
    assert e.value.status == RPCStatusCode.INVALID_ARGUMENT
