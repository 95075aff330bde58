"""Kiln gateway: BinderHub's public HTTP interface, fed from Kafka."""
