"""Prometheus metrics, kept in a registry of our own so tests and replicas never share state."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.http_requests = Counter(
            "approvals_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "approvals_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry
        )
        self.requests_created = Counter(
            "approvals_requests_created", "Approval requests created", ["status"], registry=self.registry
        )
        self.slack_cards_posted = Counter(
            "approvals_slack_cards_posted", "Approval cards posted to Slack", registry=self.registry
        )
        self.slack_delivery_failures = Counter(
            "approvals_slack_delivery_failures",
            "Cards Slack refused for good",
            ["error"],
            registry=self.registry,
        )
        self.callbacks = Counter(
            "approvals_callback_attempts", "Agent callback attempts", ["result"], registry=self.registry
        )
        self.requests_expired = Counter(
            "approvals_requests_expired", "Requests expired by the scheduler", registry=self.registry
        )
