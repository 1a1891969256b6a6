"""Verifying an ID token from a step-up, claim by claim, with PyJWT doing the cryptography.

What is checked, in order (OIDC Core 3.1.3.7, RFC 9470): an asymmetric algorithm from the allow-list
(never `none`, never HMAC: an HS256 token "signed" with the IdP's public key is refused before any key
is touched); a key the IdP publishes; the signature; `iss` exactly; `aud` contains our client id and,
when there are several audiences, `azp` is us; `exp` and `iat` with a small leeway; the `nonce` we
sent; `auth_time` present, a real instant, not later than that same leeway allows, and within the
policy's `max_age`; `amr`/`acr` meeting the policy.
"""

from __future__ import annotations

import datetime as dt
import hmac
import math
from typing import Any

import jwt

from app.oidc.provider import OidcProvider
from app.storable_text import unstorable
from approvals.identity.step_up import IDP_CLOCK_SKEW, FailureReason, MfaRequirement, VerifiedLogin

ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
EXP_LEEWAY_SECONDS = int(IDP_CLOCK_SKEW.total_seconds())


class TokenRejected(Exception):
    """The ID token does not prove what the step-up needs; `reason` is the audited failure."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: FailureReason = reason
        self.detail = detail


async def verify_id_token(
    token: str,
    *,
    provider: OidcProvider,
    nonce: str,
    requirement: MfaRequirement,
    now: dt.datetime,
) -> VerifiedLogin:
    """Every check above; raises TokenRejected naming the first one that fails."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise TokenRejected("invalid_token", "the ID token is not a JWS") from None
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise TokenRejected("invalid_token", f"algorithm {alg!r} is not accepted")
    key = await provider.signing_key(header.get("kid"))
    if key is None:
        raise TokenRejected("unknown_key", "signed with a key the identity provider does not publish")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key.key,
            algorithms=[alg],
            audience=provider.client_id,
            issuer=provider.issuer,
            leeway=EXP_LEEWAY_SECONDS,
            options={"require": ["iss", "aud", "exp", "iat", "sub"], "strict_aud": False},
        )
    except jwt.InvalidSignatureError:
        raise TokenRejected("invalid_token", "the signature does not verify") from None
    except jwt.ExpiredSignatureError:
        raise TokenRejected("invalid_token", "the ID token has expired") from None
    except jwt.InvalidIssuerError:
        raise TokenRejected("invalid_token", "the ID token comes from another issuer") from None
    except jwt.InvalidAudienceError:
        raise TokenRejected("invalid_token", "the ID token is for another client") from None
    except jwt.ImmatureSignatureError:
        raise TokenRejected("invalid_token", "the ID token is issued in the future") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenRejected("invalid_token", f"the ID token lacks {exc.claim!r}") from None
    except jwt.PyJWTError as exc:  # includes a key of the wrong type for the algorithm
        raise TokenRejected("invalid_token", f"the ID token is invalid: {exc.__class__.__name__}") from None

    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != provider.client_id:
        raise TokenRejected("invalid_token", "the ID token's authorized party is another client")
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
        raise TokenRejected("invalid_token", "the nonce does not match this sign-in")

    logged_in = _auth_time(claims, now)
    if not requirement.fresh(logged_in, now):
        raise TokenRejected(
            "stale_login",
            f"you signed in {int((now - logged_in).total_seconds())} s ago; "
            f"this policy needs a sign-in within {requirement.max_age} s",
        )
    amr = claims.get("amr")
    amr_list = [str(v) for v in amr] if isinstance(amr, list) else []
    acr = claims.get("acr")
    acr_value = str(acr) if isinstance(acr, str) else None
    if not requirement.met_by(amr_list, acr_value):
        wanted = ", ".join([*requirement.amr, *requirement.acr])
        raise TokenRejected(
            "weak_authentication",
            f"the sign-in used {', '.join(amr_list) or acr_value or 'no declared method'}; "
            f"this policy needs one of: {wanted}",
        )
    email = claims.get("email")
    # What is kept as evidence must be storable: a NUL in `sub` would fail the decision's transaction.
    for name, value in (("iss", claims["iss"]), ("sub", claims["sub"]), ("email", email), ("acr", acr_value)):
        if isinstance(value, str) and unstorable(value) is not None:
            raise TokenRejected(
                "invalid_token", f"the ID token's {name} holds characters that cannot be stored"
            )
    if any(unstorable(value) is not None for value in amr_list):
        raise TokenRejected("invalid_token", "the ID token's amr holds characters that cannot be stored")
    return VerifiedLogin(
        issuer=str(claims["iss"]),
        subject=str(claims["sub"]),
        amr=amr_list,
        acr=acr_value,
        auth_time=logged_in,
        email=email if isinstance(email, str) else None,
        email_verified=claims.get("email_verified") is True,
    )


def _auth_time(claims: dict[str, Any], now: dt.datetime) -> dt.datetime:
    """When the person signed in, as an instant no later than now plus the IdP's clock skew.

    A future auth_time would keep the step-up "fresh" until then; NaN, infinities and numbers past the
    calendar's range are not instants at all (and would raise deep in datetime).
    """
    auth_time = claims.get("auth_time")
    if not isinstance(auth_time, int | float) or isinstance(auth_time, bool):
        raise TokenRejected("stale_login", "the ID token does not say when you signed in (auth_time)")
    try:
        if not math.isfinite(auth_time):
            raise ValueError("not finite")
        logged_in = dt.datetime.fromtimestamp(auth_time, dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise TokenRejected("invalid_token", "the ID token's auth_time is not a valid time") from None
    if logged_in > now + IDP_CLOCK_SKEW:
        raise TokenRejected("invalid_token", "the ID token says you signed in later than now (auth_time)")
    return logged_in
