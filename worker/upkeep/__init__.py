"""What keeps work alive around the tasks: Redis outages ridden out, the job watchdog, the
heartbeat, webhook deliveries."""
