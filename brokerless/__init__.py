"""brokerless: ZeroMQ endpoints driving the ``streams`` protocol core."""
