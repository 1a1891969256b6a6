"""Outbound deliveries: agent callbacks sent as signed webhooks."""
