"""Approval requests: their lifecycle, intake, human decisions, reminders and what agents and people see."""
