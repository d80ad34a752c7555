"""The Kafka side of wsrt: client options, offset bookkeeping, assignment, the source loop.

* :mod:`~wsrt.kafka.options`: aiokafka options from the settings, partition discovery;
* :mod:`~wsrt.kafka.offsets`: pure bookkeeping of positions, commits and lag;
* :mod:`~wsrt.kafka.assign`: broadcast (every partition, by hand) and shared (group) assignment;
* :mod:`~wsrt.kafka.source`: the reconnect and fetch loop that feeds the hub.
"""
