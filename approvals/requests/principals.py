"""Who a request is on behalf of: an identity (an email mailbox or a Slack user ID), not free text.

Self-approval is refused by comparing identities, so both sides go through one normaliser here. An
email address is checked by email-validator (no display names, quoting, IP literals or unsafe
characters) after Unicode NFKC, so a full-width letter is the letter it looks like, and a part that mixes
scripts (a Cyrillic look-alike among Latin letters) is refused rather than taken for somebody else; the mailbox
compared is casefolded and without a `+tag` sub-address, since recruiter+offer@ reaches recruiter@.
Characters that render as nothing are refused, never stripped: an agent that sends one is either
broken or trying something, and either way it should hear about it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Literal

from email_validator import EmailNotValidError, validate_email

ACCEPTED = "an email address (like name@example.com) or a Slack user ID (like U01ABCDEF)"
SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,39}")
_MENTION = re.compile(r"<@([UW][A-Z0-9]{2,39})(?:\|[^>]*)?>")

# Default-ignorable code points (Unicode's DerivedCoreProperties) that are not in a C or Z category,
# which email-validator refuses already: they render as nothing, so two addresses differing only by
# one look the same to a person.
_INVISIBLE_RANGES = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong and jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # half-width Hangul filler
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
Resolution = Literal["resolved", "not_found", "unavailable", "not_attempted"]


class NotAPrincipal(ValueError):
    """The text is neither an email address nor a Slack user ID; the message says why and what is."""


@dataclass(frozen=True)
class Requester:
    """The person a request is on behalf of, as an identity to compare.

    `mailbox`: the normalised mailbox of an email requester (None for a Slack ID); `slack_user_id`:
    the Slack user, given by the agent or resolved from the email at intake; `resolution`: what
    became of resolving an email to a Slack user ("resolved" for an ID the agent gave).
    """

    mailbox: str | None
    slack_user_id: str | None
    resolution: Resolution = "not_attempted"
    # The email as sent once validated (NFKC, domain lowercased), `+tag` and all: what Slack may know.
    address: str | None = None

    @property
    def resolved(self) -> bool:
        return self.slack_user_id is not None

    def lookup_addresses(self) -> list[str]:
        """The addresses to ask Slack for, in order: the mailbox, then the address as sent if it differs."""
        return list(dict.fromkeys(a for a in (self.mailbox, self.address) if a is not None))

    def audit_data(self) -> dict[str, str | None]:
        """The identity as recorded in the request's `request_created` event."""
        return {"email": self.mailbox, "slack_user_id": self.slack_user_id, "resolution": self.resolution}


def _invisible(ch: str) -> bool:
    if unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"):
        return True
    code = ord(ch)
    return any(low <= code <= high for low, high in _INVISIBLE_RANGES)


def _refuse_invisible(text: str) -> None:
    found = sorted({ch for ch in text if _invisible(ch)})
    if found:
        names = ", ".join(f"U+{ord(ch):04X} {unicodedata.name(ch, '')}".rstrip() for ch in found)
        raise NotAPrincipal(f"contains invisible or control characters ({names}); must be {ACCEPTED}")


# Scripts that are written together in one word: Japanese mixes kana and kanji.
_SCRIPT_FAMILIES = {"HIRAGANA": "JAPANESE", "KATAKANA": "JAPANESE", "CJK": "JAPANESE"}


def _refuse_mixed_scripts(address: str) -> None:
    """Refuse a local part or domain label that mixes letters of several scripts.

    NFKC folds full-width letters but not look-alikes from other scripts: Cyrillic U+0435 for the "e"
    of "rex@" would name somebody else to the self-approval check while reading as the requester.
    Letters of one script (zoe with a diaeresis, a Cyrillic name) are an address like any other.
    """
    for part in re.split(r"[@.]", address):
        scripts = {
            _SCRIPT_FAMILIES.get(name.split()[0], name.split()[0])
            for name in (unicodedata.name(ch, "UNKNOWN") for ch in part if ch.isalpha())
        }
        if len(scripts) > 1:
            raise NotAPrincipal(
                f"mixes letters of several scripts ({', '.join(sorted(scripts)).lower()}) in {part!r}, "
                f"as look-alike addresses do; must be {ACCEPTED}"
            )


def _nfkc_casefold(text: str) -> str:
    # NFKC again after casefolding: casefolding can produce text NFKC would still change.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _validated(text: str) -> tuple[str, str]:
    """(the address as email-validator normalises it, its mailbox for comparison)."""
    _refuse_invisible(text)
    folded = unicodedata.normalize("NFKC", text)
    _refuse_mixed_scripts(folded)
    try:
        valid = validate_email(folded, check_deliverability=False)
    except EmailNotValidError as error:
        raise NotAPrincipal(f"must be {ACCEPTED}: {error}") from None
    local = _nfkc_casefold(valid.local_part).split("+", 1)[0]
    if not local:
        raise NotAPrincipal(f"must be {ACCEPTED}: there is nothing before the +tag")
    return valid.normalized, f"{local}@{_nfkc_casefold(valid.domain)}"


def normalise_email(text: str) -> str:
    """The mailbox an email address reaches, for comparison: NFKC, casefolded, without `+tag`.

    Raises NotAPrincipal (saying why) for anything email-validator does not accept as an address.
    """
    return _validated(text)[1]


def parse_requester(text: str) -> Requester:
    """`on_behalf_of` as an identity: a Slack user ID as is, an email as its normalised mailbox."""
    _refuse_invisible(text)
    candidate = unicodedata.normalize("NFKC", text)
    if SLACK_USER_ID.fullmatch(candidate):
        return Requester(mailbox=None, slack_user_id=candidate, resolution="resolved")
    if _MENTION.fullmatch(candidate):
        raise NotAPrincipal(f"a Slack mention is not accepted: must be {ACCEPTED}, without <@ >")
    if candidate.lower().startswith("mailto:"):
        raise NotAPrincipal(f"a mailto: link is not accepted: must be {ACCEPTED}")
    if "@" not in candidate:
        raise NotAPrincipal(f"must be {ACCEPTED}; a name alone does not identify anyone")
    address, mailbox = _validated(candidate)
    return Requester(mailbox=mailbox, slack_user_id=None, address=address)


def clicker_mailbox(email: str | None) -> str | None:
    """A clicker's Slack email as a mailbox to compare, or None when Slack gave none usable."""
    if not email:
        return None
    try:
        return normalise_email(email)
    except NotAPrincipal:
        # Slack vouches for its users' addresses; one email-validator dislikes still compares as text.
        return _nfkc_casefold(email.strip())


def legacy_requester(on_behalf_of: str) -> Requester | None:
    """The identity of a request stored before requesters were identities (migration 0011), when its
    free text holds one: an address or a Slack ID, also inside a display-name form or a mention."""
    candidates = [on_behalf_of.strip()]
    mention = _MENTION.fullmatch(candidates[0])
    if mention is not None:
        candidates.append(mention.group(1))
    candidates.append(parseaddr(candidates[0].removeprefix("mailto:"))[1])
    for candidate in candidates:
        try:
            return parse_requester(candidate)
        except NotAPrincipal:
            continue
    return None


def stored_requester(on_behalf_of: str, email: str | None, slack_user_id: str | None) -> Requester | None:
    """A request's requester from its row: its stored identity, or for a request stored before
    migration 0011 (neither column set) whatever identity its free text holds."""
    if email is None and slack_user_id is None:
        return legacy_requester(on_behalf_of)
    return Requester(mailbox=email, slack_user_id=slack_user_id)


def is_requester(requester: Requester, *, user_id: str, email: str | None) -> bool:
    """Whether the Slack user (`user_id`, with Slack's `email` for them) is the requester."""
    if requester.slack_user_id is not None and requester.slack_user_id == user_id:
        return True
    mailbox = clicker_mailbox(email)
    return requester.mailbox is not None and mailbox is not None and requester.mailbox == mailbox
