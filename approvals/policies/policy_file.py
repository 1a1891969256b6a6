"""The policy file (DESIGN.md section 3): its rules, how it is loaded and how an action is judged.

`load_policies` / `parse_policies` turn `policies.yml` into a validated `PolicySet` or raise a
`PolicyError` that names the file, line and field. `evaluate` picks the rule for an action: an exact
name beats a glob, the first matching glob in file order wins, and no match means deny.
"""

import difflib
import fnmatch
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from approvals.durations import parse_duration

Decision = Literal["allow", "deny", "require_approval"]
RFC8176_AMR = frozenset(
    "face fpt geo hwk iris kba mca mfa otp pin pwd rba retina sc sms swk tel user vbm wia".split()
)
_GLOB_CHARS = frozenset("*?[")
_PERCENT = re.compile(r"([0-9]{1,2})%")


def _matching(pattern: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _duration(*, allow_zero: bool) -> BeforeValidator:
    def check(value: Any) -> int:
        return parse_duration(value, allow_zero=allow_zero)

    return BeforeValidator(check)


def _reminder(value: Any) -> str:
    # An int is a number of seconds; it is kept as text so every entry has one type.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and _is_reminder(value):
        return value
    raise ValueError(f"{value!r} is not a reminder: use a percentage from 1% to 99% or a duration like 30m")


def _is_reminder(value: str) -> bool:
    percent = _PERCENT.fullmatch(value)
    if percent is not None:
        return 1 <= int(percent.group(1)) <= 99
    try:
        parse_duration(value)
    except ValueError:
        return False
    return True


def _amr(value: str) -> str:
    if value not in RFC8176_AMR:
        raise ValueError(
            f"{value!r} is not an RFC 8176 amr value: use one of {', '.join(sorted(RFC8176_AMR))}"
        )
    return value


def _rule_name(value: str) -> str:
    if not value or len(value) > 200 or value.strip() != value or not value.isprintable():
        raise ValueError(f"{value!r} is not a rule name: use 1 to 200 printable characters, no outer spaces")
    return value


def _unique(values: list[str]) -> list[str]:
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} listed more than once")
    return values


UserId = Annotated[StrictStr, _matching(r"[UW][A-Z0-9]{2,}", "a Slack user id (like U01COO)")]
UsergroupId = Annotated[StrictStr, _matching(r"S[A-Z0-9]{2,}", "a Slack usergroup id (like S0EXEC)")]
ChannelId = Annotated[StrictStr, _matching(r"[CG][A-Z0-9]{2,}", "a Slack channel id (like C0HIRING)")]
ActionPattern = Annotated[
    StrictStr,
    _matching(
        r"[A-Za-z0-9_.:*?\[\]-]{1,200}",
        "an action: use 1 to 200 letters, digits, _ . : - and, for globs, * ? [ ]",
    ),
]
RedactPath = Annotated[StrictStr, _matching(r"params(\.[A-Za-z0-9_-]+)+", "a dotted path like params.salary")]
Seconds = Annotated[int, _duration(allow_zero=False)]
SecondsOrZero = Annotated[int, _duration(allow_zero=True)]
Reminder = Annotated[str, BeforeValidator(_reminder)]
Amr = Annotated[StrictStr, AfterValidator(_amr)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Approvers(_Model):
    """Who may decide: Slack users, and usergroups resolved when the decision is made."""

    users: Annotated[list[UserId], AfterValidator(_unique)] = []
    usergroups: Annotated[list[UsergroupId], AfterValidator(_unique)] = []

    @property
    def is_empty(self) -> bool:
        """True when nobody at all is named."""
        return not self.users and not self.usergroups


class MfaRule(_Model):
    """The step-up login an approver must show before their click counts."""

    required: StrictBool = False
    max_age: SecondsOrZero = 600
    amr: list[Amr] = ["mfa", "otp", "hwk", "swk", "fpt", "face"]
    acr: list[Annotated[StrictStr, Field(min_length=1)]] = []

    @model_validator(mode="after")
    def _something_to_check(self) -> "MfaRule":
        # With neither list there is no claim to check, so `required` would accept any login.
        if self.required and not self.amr and not self.acr:
            raise ValueError("mfa is required but amr and acr are both empty: list at least one value")
        return self


class Rule(_Model):
    """One entry of `policies:`: the decision for an action, and who approves and how."""

    name: Annotated[StrictStr, AfterValidator(_rule_name)] | None = None
    action: ActionPattern
    decision: Decision
    approvers: Approvers = Field(default_factory=Approvers, validate_default=True)
    required_approvals: Annotated[int, Field(strict=True, ge=1, le=20)] = 1
    allow_self_approval: StrictBool = False
    # True refuses, at intake, a request whose requester is not a Slack user (an email Slack does not
    # know, or Slack off): the self-approval check then always has a Slack ID to compare.
    requester_must_resolve: StrictBool = False
    mfa: MfaRule = Field(default_factory=MfaRule)
    channel: ChannelId | None = None
    dm_approvers: StrictBool = Field(default=False, validate_default=True)
    expires_in: Seconds = 86_400
    remind_at: list[Reminder] = []
    escalate_to: Approvers | None = None
    redact: list[RedactPath] = []

    # The cross-field checks are field validators (fields are validated in the order declared above)
    # rather than one model validator, so that an error points at the field and its line.

    @field_validator("approvers")
    @classmethod
    def _someone_approves(cls, approvers: Approvers, info: ValidationInfo) -> Approvers:
        if info.data.get("decision") == "require_approval" and approvers.is_empty:
            raise ValueError("a require_approval rule needs at least one approver: list users or usergroups")
        return approvers

    @field_validator("required_approvals")
    @classmethod
    def _enough_approvers(cls, required: int, info: ValidationInfo) -> int:
        approvers = info.data.get("approvers")
        if (
            info.data.get("decision") == "require_approval"
            and isinstance(approvers, Approvers)
            and not approvers.usergroups
            and required > len(approvers.users)
        ):
            raise ValueError(
                f"{required} approvals are required but only {len(approvers.users)} user(s) are listed"
                " and no usergroups: the request could never be approved"
            )
        return required

    @field_validator("dm_approvers")
    @classmethod
    def _somewhere_to_ask(cls, dm_approvers: bool, info: ValidationInfo) -> bool:
        no_channel = "channel" in info.data and info.data["channel"] is None
        if info.data.get("decision") == "require_approval" and no_channel and not dm_approvers:
            raise ValueError("a require_approval rule needs a channel, dm_approvers: true, or both")
        return dm_approvers

    @field_validator("remind_at")
    @classmethod
    def _reminders_before_expiry(cls, remind_at: list[str], info: ValidationInfo) -> list[str]:
        expires_in = info.data.get("expires_in")
        for reminder in remind_at:
            if (
                expires_in is not None
                and not reminder.endswith("%")
                and parse_duration(reminder) >= expires_in
            ):
                raise ValueError(f"reminder {reminder!r} is not before expires_in ({expires_in}s)")
        return remind_at

    @field_validator("escalate_to")
    @classmethod
    def _escalates_to_someone(cls, escalate_to: Approvers | None) -> Approvers | None:
        if escalate_to is not None and escalate_to.is_empty:
            raise ValueError("escalate_to names nobody: list users or usergroups, or leave it out")
        return escalate_to

    @property
    def display_name(self) -> str:
        """The rule's name, or its action when it has none."""
        return self.name if self.name is not None else self.action

    @property
    def is_glob(self) -> bool:
        """True when `action` is a pattern rather than one exact action name."""
        return not _GLOB_CHARS.isdisjoint(self.action)


_DUPLICATE_RULE = "duplicate_rule"


class PolicySet(_Model):
    """The whole policy file."""

    default: Literal["deny"] = "deny"
    policies: list[Rule]

    @field_validator("default", mode="before")
    @classmethod
    def _default_is_deny(cls, default: Any) -> Any:
        if default != "deny":
            raise ValueError(
                f"{default!r} is not accepted: only 'deny' is (an action no policy names is denied)"
            )
        return default

    @field_validator("policies")
    @classmethod
    def _names_and_actions_unique(cls, policies: list[Rule]) -> list[Rule]:
        first_by_action: dict[str, int] = {}
        first_by_name: dict[str, int] = {}
        for index, rule in enumerate(policies):
            if rule.action in first_by_action:
                first = first_by_action[rule.action]
                clash = f"action {rule.action!r} is already in policies[{first}]: this rule could never apply"
            elif rule.display_name in first_by_name:
                first = first_by_name[rule.display_name]
                clash = (
                    f"name {rule.display_name!r} is already used by policies[{first}]: names must be unique"
                )
            else:
                first_by_action[rule.action] = first_by_name[rule.display_name] = index
                continue
            # The index rides in the context so the error can point at this rule's line, not the list's.
            raise PydanticCustomError(_DUPLICATE_RULE, clash, {"index": index})
        return policies


class PolicyError(Exception):
    """The policy file cannot be used; `str()` is one line naming the file, line and field."""

    def __init__(
        self, path: str, line: int | None, field: str, message: str, errors: Sequence["PolicyError"] = ()
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        self.errors: list[PolicyError] = list(errors) or [self]
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


@dataclass(frozen=True)
class LoadedPolicies:
    """A validated policy set with the exact text it came from and that text's hash."""

    policy_set: PolicySet
    content: str
    sha256: str
    path: str


def load_policies(path: str | os.PathLike[str]) -> LoadedPolicies:
    """Read, parse and validate the policy file at `path`."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            raw = file.read()
    except OSError as error:
        raise PolicyError(name, None, "", f"cannot read the policy file: {error.strerror}") from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"the policy file is not UTF-8 (byte {raw[error.start]:#04x} at offset {error.start})"
        raise PolicyError(name, None, "", message) from error
    return parse_policies(text, name)


def parse_policies(text: str, path: str = "<string>") -> LoadedPolicies:
    """Parse and validate policy YAML; `path` is only used in error messages and the result."""
    root, data = _read_yaml(text, path)
    if not isinstance(data, dict):
        raise PolicyError(path, _line(root), "", "the file must be a mapping with `default` and `policies`")
    try:
        policy_set = PolicySet.model_validate(data)
    except ValidationError as error:
        raise _policy_error(error, root, path) from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return LoadedPolicies(policy_set=policy_set, content=text, sha256=digest, path=path)


def _read_yaml(text: str, path: str) -> tuple[yaml.Node, object]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PolicyError(path, None, "", "the policy file is empty: it needs `default` and `policies`")
        _reject_duplicate_keys(root, path)
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as error:
        line = _line(error.problem_mark) if error.problem_mark else None
        message = ": ".join(part for part in (error.context, error.problem) if part)
        raise PolicyError(path, line, "", f"invalid YAML: {message}") from None
    except yaml.YAMLError as error:
        raise PolicyError(path, None, "", f"invalid YAML: {error}") from None
    finally:
        loader.dispose()


def _reject_duplicate_keys(root: yaml.Node, path: str) -> None:
    # PyYAML keeps the last of two equal keys silently; a second `decision:` must not win unseen.
    todo: list[yaml.Node] = [root]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_lines: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in first_lines:
                        message = f"duplicate key {key.value!r} (first on line {first_lines[key.value]})"
                        raise PolicyError(path, _line(key), "", message)
                    first_lines[key.value] = _line(key)
                todo.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)


def _line(node_or_mark: yaml.Node | yaml.Mark) -> int:
    mark = node_or_mark if isinstance(node_or_mark, yaml.Mark) else node_or_mark.start_mark
    return int(mark.line) + 1


def _line_at(root: yaml.Node, loc: tuple[int | str, ...]) -> int:
    """The line of the deepest node along `loc`: the key's line for a mapping entry."""
    node, line = root, _line(root)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next(
                (e for e in node.value if isinstance(e[0], yaml.ScalarNode) and e[0].value == part), None
            )
            if entry is None:
                break
            line, node = _line(entry[0]), entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = _line(node)
        else:
            break
    return line


def _policy_error(error: ValidationError, root: yaml.Node, path: str) -> PolicyError:
    found = []
    # A misspelt key is usually the cause of the other errors (a "missing" field), so it goes first.
    for detail in sorted(error.errors(), key=lambda detail: detail["type"] != "extra_forbidden"):
        loc = detail["loc"]
        if detail["type"] == _DUPLICATE_RULE:
            loc = (*loc, detail["ctx"]["index"])
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = _unknown_field_message(loc)
        found.append(PolicyError(path, _line_at(root, loc), _field(loc), message))
    first = found[0]
    return PolicyError(path, first.line, first.field, first.message, found)


def _field(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


_MODEL_UNDER_KEY: dict[int | str, type[BaseModel]] = {
    "policies": Rule,
    "approvers": Approvers,
    "escalate_to": Approvers,
    "mfa": MfaRule,
}


def _unknown_field_message(loc: tuple[int | str, ...]) -> str:
    parents = [part for part in loc[:-1] if isinstance(part, str)]
    model = _MODEL_UNDER_KEY.get(parents[-1], PolicySet) if parents else PolicySet
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(allowed)}"
    return f"unknown field {loc[-1]!r}: {hint}"


@dataclass(frozen=True)
class Evaluation:
    """Which rule decides an action, its decision, and a sentence saying why."""

    decision: Decision
    rule: Rule | None
    rule_index: int | None
    policy_name: str
    reason: str


def evaluate(policy_set: PolicySet, action: str) -> Evaluation:
    """Judge `action`: an exact rule first, then the first matching glob in file order, else deny."""
    found = _find_rule(policy_set.policies, action)
    if found is None:
        reason = f"no policy matches action {action!r}; default is {policy_set.default}"
        return Evaluation(policy_set.default, None, None, "default", reason)
    index, rule = found
    how = f"by glob {rule.action!r}" if rule.is_glob else "exactly"
    reason = (
        f"rule {rule.display_name!r} (policies[{index}]) matches action {action!r} {how}: {rule.decision}"
    )
    return Evaluation(rule.decision, rule, index, rule.display_name, reason)


def _find_rule(rules: list[Rule], action: str) -> tuple[int, Rule] | None:
    for index, rule in enumerate(rules):
        if not rule.is_glob and rule.action == action:
            return index, rule
    for index, rule in enumerate(rules):
        if rule.is_glob and fnmatch.fnmatchcase(action, rule.action):
            return index, rule
    return None
