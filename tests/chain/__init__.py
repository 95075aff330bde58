"""The whole chain in memory: gateway, resolver, builder, launcher and analytics on one MemoryBus."""
