"""The broker the run started is a real Kafka: produce, consume in a group, commit."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from wsrt.brokers import Broker


async def test_produce_consume_and_commit(broker: Broker, make_topics) -> None:
    (topic,) = await make_topics("harness", partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(topic, b'{"n":%d}' % i, partition=i % 2) for i in range(10)
        ]
    finally:
        await producer.stop()

    group = f"harness-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        received = []
        while len(received) < 10:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batches.items():
                received += [m.value for m in messages]
                await consumer.commit({tp: messages[-1].offset + 1})
        committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        await consumer.stop()

    assert sorted(received) == sorted(b'{"n":%d}' % i for i in range(10))
    last = {m.partition: m.offset for m in sent}
    assert committed == {0: last[0] + 1, 1: last[1] + 1}
