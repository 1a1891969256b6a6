"""The sandbox's small Slack workspace, as data: who is in it, its channels and its user group.

One source for both stand-ins: `load_workspace` fills a SandboxSlack with it, and `idp_people` gives the
dev identity provider the same people with the same emails, so that a step-up's first sign-in links by
email exactly as it would with a real Slack and a real IdP.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.sandbox.identity_provider import Person
from app.sandbox.slack_api import SandboxSlack


@dataclass(frozen=True)
class Member:
    """A person in the workspace: their Slack user and their account at the (dev) identity provider."""

    user_id: str
    handle: str
    real_name: str
    email: str
    title: str

    @property
    def subject(self) -> str:
        """Their IdP subject: stable, and unlike the Slack ID, as an IdP's subjects are."""
        return f"dev|{self.handle}"


@dataclass(frozen=True)
class Channel:
    channel_id: str
    name: str


@dataclass(frozen=True)
class UserGroup:
    usergroup_id: str
    handle: str
    members: tuple[str, ...]  # Slack user IDs


@dataclass(frozen=True)
class Workspace:
    members: tuple[Member, ...]
    channels: tuple[Channel, ...]
    usergroups: tuple[UserGroup, ...]

    def member(self, user_id: str) -> Member:
        """The member with this Slack user ID (KeyError if none)."""
        for member in self.members:
            if member.user_id == user_id:
                return member
        raise KeyError(user_id)


COO = Member("U01COO", "cora", "Cora Coo", "coo@example.com", "COO")
CFO = Member("U02CFO", "finn", "Finn Cfo", "cfo@example.com", "CFO")
RECRUITER = Member("U09REC", "rex", "Rex Recruiter", "recruiter@example.com", "Recruiter")
# In the workspace but approver of nothing: the person whose clicks the service must refuse.
OUTSIDER = Member("U0OUTSIDER", "olly", "Olly Outsider", "outsider@example.com", "Contractor")

HIRING = Channel("C0HIRING", "hiring")
ONCALL = Channel("C0ONCALL", "approvals-oncall")
EXEC = UserGroup("S0EXEC", "exec", (COO.user_id, CFO.user_id))
# The example policies.yml asks finance (two of them) to approve refunds.
FINANCE = UserGroup("S0FINANCE", "finance", (CFO.user_id, COO.user_id))

WORKSPACE = Workspace(
    members=(COO, CFO, RECRUITER, OUTSIDER),
    channels=(HIRING, ONCALL),
    usergroups=(EXEC, FINANCE),
)


def load_workspace(slack: SandboxSlack, workspace: Workspace = WORKSPACE) -> None:
    """Put the workspace's users, user groups and channels into `slack` (entries of the same ID are
    replaced; anything else already there stays)."""
    for member in workspace.members:
        slack.users[member.user_id] = {
            "name": member.handle,
            "real_name": member.real_name,
            "email": member.email,
        }
    for group in workspace.usergroups:
        slack.usergroups[group.usergroup_id] = list(group.members)
    # SandboxSlack keeps no channel registry: a channel is where messages are stored, so each one
    # starts as an empty history (kept, if it already has messages).
    for channel in workspace.channels:
        slack.messages.setdefault(channel.channel_id, [])


def idp_people(workspace: Workspace = WORKSPACE) -> list[Person]:
    """The dev identity provider's people: every member, with the email Slack has for them."""
    return [
        Person(sub=member.subject, email=member.email, name=f"{member.real_name} ({member.title})")
        for member in workspace.members
    ]
