"""RabbitMQ: the lanes, priority bands and dead-letter queues agents consume.
"""
