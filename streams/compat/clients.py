"""Private reads of plain aiokafka clients (not Faust's).

These are the aiokafka consumers and admin clients that tools such as
``loyalty bench`` create themselves, and the worker's broker probe
(:mod:`streams.health`) beside Faust's own clients.
"""

from __future__ import annotations

from typing import Any


async def delete_consumer_group(admin: Any, group: str) -> None:
    """Delete consumer group ``group`` (it must have no members) through ``admin``.

    Works around: aiokafka's ``AIOKafkaAdminClient`` has no
    ``delete_consumer_groups()``; the request is sent to the group's
    coordinator through the admin client's private ``_client``
    (``AIOKafkaClient.send``). Raises whatever the request raises.
    """
    from aiokafka.protocol.admin import DeleteGroupsRequest

    node = await admin.find_coordinator(group)
    await admin._client.send(node, DeleteGroupsRequest([group]))


async def refresh_topic_metadata(consumer: Any, topic: str) -> None:
    """Make ``consumer`` fetch metadata for ``topic`` (e.g. before ``assign`` to it).

    Works around: an ``AIOKafkaConsumer`` fetches metadata only for topics it
    subscribed to or was assigned, so ``partitions_for_topic`` stays None for
    any other. Adds the topic to the private ``_client`` (``AIOKafkaClient
    .add_topic``) and forces an update (``force_metadata_update``).
    """
    consumer._client.add_topic(topic)
    await consumer._client.force_metadata_update()


async def track_only(client_owner: Any, topics: list[str]) -> None:
    """Keep the metadata of ``client_owner``'s client (a consumer or admin client) to ``topics``.

    Works around: an aiokafka client that has neither subscribed nor sent to
    a topic tracks *no* topic, which aiokafka reads as "all of them": each of
    its metadata updates (the periodic refresh, or one forced to find a
    partition's leader) then fetches and parses every topic of the cluster,
    synchronously, in the caller's event loop. Sets the private ``_client``'s
    tracked topics (``AIOKafkaClient.set_topics``) and waits for the update
    that brings them.
    """
    await client_owner._client.set_topics(topics)
