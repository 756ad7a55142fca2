//! Event delivery: RabbitMQ through `lapin` when an AMQP URL is configured, HTTP otherwise.
