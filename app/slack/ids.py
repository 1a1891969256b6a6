"""Identifiers shared by the card builders, the Bolt listeners and manifest.yml: one place to rename them."""

from __future__ import annotations

from enum import StrEnum


class ActionId(StrEnum):
    """action_id of the buttons on a request card."""

    APPROVE = "approve_request"
    REJECT = "reject_request"
    VERIFY_SSO = "verify_with_sso"  # a link button: Slack still sends the click, which we only ack


class CallbackId(StrEnum):
    """callback_id of the modals we open."""

    REJECT_MODAL = "reject_reason"


# The reject modal's input: its view_submission values live at state.values[REASON_BLOCK][REASON_INPUT].
REASON_BLOCK = "reason_block"
REASON_INPUT = "reason_input"
MAX_REASON = 2000

# Must match features.slash_commands[].command in manifest.yml (tests/test_manifest.py checks it).
SLASH_COMMAND = "/approvals"
