"""The policy file: loading, validation with file/line/field errors, and evaluation."""

import hashlib
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
from pydantic import ValidationError

from approvals.policies.policy_file import (
    Approvers,
    MfaRule,
    PolicyError,
    PolicySet,
    Rule,
    evaluate,
    load_policies,
    parse_policies,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "policies.yml"


def policy_error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as raised:
        parse_policies(dedent(text), "policies.yml")
    return raised.value


def rule(**fields: Any) -> Rule:
    base: dict[str, Any] = {
        "action": "send_offer_letter",
        "decision": "require_approval",
        "approvers": {"users": ["U01COO"]},
        "channel": "C0HIRING",
    }
    return Rule.model_validate(base | fields)


def rule_error(**fields: Any) -> str:
    with pytest.raises(ValidationError) as raised:
        rule(**fields)
    return str(raised.value)


def policy_set(*rules: dict[str, Any]) -> PolicySet:
    return PolicySet.model_validate({"policies": list(rules)})


# --- the example file -------------------------------------------------------------------------------


def test_the_example_policies_file_loads_with_the_documented_rules() -> None:
    rules = {r.display_name: r for r in load_policies(EXAMPLE).policy_set.policies}

    offer = rules["send_offer_letter"]
    assert offer.decision == "require_approval"
    assert offer.approvers == Approvers(users=["U01COO", "U09REC"])
    assert offer.channel == "C0HIRING"
    # Offer letters need a fresh MFA sign-in: `make run` brings the sandbox's dev IdP for it.
    assert (offer.mfa.required, offer.mfa.max_age) == (True, 600)
    assert offer.expires_in == 24 * 3600
    assert offer.remind_at == ["50%", "90%"]
    assert offer.redact == ["params.salary"]

    refund = rules["refunds"]
    assert refund.action == "refund_customer"
    assert refund.required_approvals == 2
    assert refund.approvers == Approvers(usergroups=["S0FINANCE"])
    assert refund.dm_approvers is True
    assert refund.mfa.required is False
    assert refund.expires_in == 4 * 3600

    assert rules["delete_*"].decision == "deny"
    assert rules["read_*"].decision == "allow"


def test_loaded_policies_keep_the_exact_content_its_sha256_and_path(tmp_path: Path) -> None:
    raw = EXAMPLE.read_bytes().replace(b"\n", b"\r\n")
    path = tmp_path / "policies.yml"
    path.write_bytes(raw)

    loaded = load_policies(path)

    assert loaded.content.encode("utf-8") == raw
    assert loaded.sha256 == hashlib.sha256(raw).hexdigest()
    assert loaded.path == str(path)


def test_parsed_policies_hash_the_utf8_bytes_of_the_text() -> None:
    text = "# café\npolicies: []\n"
    loaded = parse_policies(text)
    assert loaded.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert loaded.path == "<string>"
    assert loaded.policy_set == PolicySet(policies=[])


# --- reading the file -------------------------------------------------------------------------------


def test_a_missing_file_is_a_policy_error_without_a_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(PolicyError) as raised:
        load_policies(missing)
    assert raised.value.line is None
    assert raised.value.path == str(missing)
    assert str(raised.value) == f"{missing}: cannot read the policy file: No such file or directory"


def test_a_directory_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policies(tmp_path)


def test_a_file_that_is_not_utf8_is_a_policy_error_without_a_line(tmp_path: Path) -> None:
    path = tmp_path / "policies.yml"
    path.write_bytes(b"default: deny\n# caf\xe9\npolicies: []\n")
    with pytest.raises(PolicyError) as raised:
        load_policies(path)
    assert raised.value.line is None
    assert "not UTF-8 (byte 0xe9 at offset 19)" in raised.value.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_rejected(text: str) -> None:
    assert "the policy file is empty" in policy_error(text).message


@pytest.mark.parametrize("text", ["- action: x\n", "deny\n", "42\n"])
def test_a_top_level_that_is_not_a_mapping_is_rejected(text: str) -> None:
    error = policy_error(text)
    assert error.line == 1
    assert "must be a mapping with `default` and `policies`" in error.message


def test_a_yaml_syntax_error_reports_its_line() -> None:
    error = policy_error(
        """\
        default: deny
        policies:
          - action: read_files
            decision: [allow
          - action: other
        """
    )
    assert error.line == 5
    assert error.message.startswith("invalid YAML: ")


def test_a_tab_indentation_error_reports_its_line() -> None:
    error = policy_error("default: deny\npolicies:\n\t- action: x\n")
    assert error.line == 3
    assert "invalid YAML" in str(error)


def test_two_yaml_documents_are_rejected() -> None:
    error = policy_error("policies: []\n---\npolicies: []\n")
    assert "expected a single document" in error.message
    assert error.line == 2


def test_python_object_tags_are_refused_not_constructed() -> None:
    error = policy_error("policies: !!python/object/apply:os.system ['true']\n")
    assert error.line == 1
    assert "could not determine a constructor" in error.message


def test_a_repeated_key_is_rejected_at_the_second_occurrence() -> None:
    error = policy_error(
        """\
        policies:
          - action: wire_money
            decision: deny
            channel: C0HIRING
            decision: allow
        """
    )
    assert (error.line, error.message) == (5, "duplicate key 'decision' (first on line 3)")


# --- validation errors point at the file, line and field ---------------------------------------------


def test_a_bad_decision_reports_its_line_and_field_in_one_line() -> None:
    error = policy_error(
        """\
        default: deny
        policies:
          - action: read_files
            decision: allow
          - action: send_offer_letter
            decision: maybe
        """
    )
    assert error.line == 6
    assert error.field == "policies[1].decision"
    assert str(error) == (
        "policies.yml:6: policies[1].decision: Input should be 'allow', 'deny' or 'require_approval'"
    )


def test_an_error_inside_a_nested_list_reports_the_item_line() -> None:
    error = policy_error(
        """\
        policies:
          - action: send_offer_letter
            decision: require_approval
            approvers:
              users:
                - U01COO
                - coo@example.com
            channel: C0HIRING
        """
    )
    assert error.line == 7
    assert error.field == "policies[0].approvers.users[1]"
    assert error.message == "'coo@example.com' is not a Slack user id (like U01COO)"


def test_a_missing_field_reports_the_line_where_its_rule_starts() -> None:
    error = policy_error(
        """\
        policies:
          - action: read_files
            decision: allow

          - name: no action here
            decision: deny
        """
    )
    assert (error.line, error.field, error.message) == (5, "policies[1].action", "Field required")


def test_a_missing_policies_list_is_reported() -> None:
    error = policy_error("default: deny\n")
    assert (error.line, error.field, error.message) == (1, "policies", "Field required")


def test_an_unknown_field_suggests_the_closest_known_one() -> None:
    error = policy_error(
        """\
        policies:
          - action: read_files
            decision: allow
            mfa:
              requried: true
        """
    )
    assert str(error) == (
        "policies.yml:5: policies[0].mfa.requried: unknown field 'requried': did you mean 'required'?"
    )


def test_an_unknown_top_level_field_lists_the_allowed_ones() -> None:
    error = policy_error("policies: []\nrules: []\n")
    assert str(error) == "policies.yml:2: rules: unknown field 'rules': expected one of default, policies"


def test_a_misspelt_field_is_reported_before_the_error_it_causes() -> None:
    error = policy_error(
        """\
        policies:
          - action: send_offer_letter
            decision: require_approval
            channel: C0HIRING
            aprovers: {users: [U01COO]}
        """
    )
    assert (error.line, error.field) == (5, "policies[0].aprovers")
    assert [e.field for e in error.errors] == ["policies[0].aprovers", "policies[0].approvers"]


def test_every_error_is_kept_with_its_own_line() -> None:
    error = policy_error(
        """\
        policies:
          - action: a
            decision: nope
          - action: b
            decision: deny
            expires_in: 15x
        """
    )
    assert [(e.line, e.field) for e in error.errors] == [
        (3, "policies[0].decision"),
        (6, "policies[1].expires_in"),
    ]
    assert error.errors[1].message == (
        "'15x' is not a duration: use a number of seconds or a number followed by s, m, h or d"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('required_approvals: "2"', "Input should be a valid integer"),
        ("required_approvals: true", "Input should be a valid integer"),
        ("required_approvals: 1.0", "Input should be a valid integer"),
        ('allow_self_approval: "false"', "Input should be a valid boolean"),
        ("allow_self_approval: 1", "Input should be a valid boolean"),
        ("channel: 12345", "Input should be a valid string"),
        ("expires_in: true", "True is not a duration"),
        ("expires_in: 1.5", "1.5 is not a duration"),
    ],
)
def test_wrong_types_are_rejected_not_coerced(line: str, expected: str) -> None:
    error = policy_error(
        f"""\
        policies:
          - action: refund_customer
            decision: require_approval
            approvers: {{usergroups: [S0FINANCE]}}
            dm_approvers: true
            {line}
        """
    )
    assert error.line == 6
    assert error.message.startswith(expected)


@pytest.mark.parametrize("default", ["allow", "require_approval", "Deny", "null", "false"])
def test_the_default_can_only_be_deny(default: str) -> None:
    error = policy_error(f"policies: []\ndefault: {default}\n")
    assert (error.line, error.field) == (2, "default")
    assert "only 'deny' is" in error.message


def test_the_default_may_be_left_out_and_is_deny() -> None:
    assert parse_policies("policies: []\n").policy_set.default == "deny"


def test_two_rules_with_the_same_name_are_rejected_at_the_second() -> None:
    error = policy_error(
        """\
        policies:
          - name: reads
            action: read_files
            decision: allow
          - name: reads
            action: read_mail
            decision: allow
        """
    )
    assert (error.line, error.field) == (5, "policies[1]")
    assert error.message == "name 'reads' is already used by policies[0]: names must be unique"


def test_a_rule_without_a_name_clashes_with_a_rule_named_after_its_action() -> None:
    with pytest.raises(ValidationError, match="name 'read_mail' is already used by policies\\[0\\]"):
        policy_set(
            {"name": "read_mail", "action": "read_*", "decision": "allow"},
            {"action": "read_mail", "decision": "deny"},
        )


def test_two_rules_for_the_same_action_are_rejected_because_the_second_never_applies() -> None:
    with pytest.raises(ValidationError, match="action 'delete_\\*' is already in policies\\[0\\]"):
        policy_set(
            {"name": "one", "action": "delete_*", "decision": "deny"},
            {"name": "two", "action": "delete_*", "decision": "allow"},
        )


# --- rules ------------------------------------------------------------------------------------------


def test_a_require_approval_rule_needs_an_approver() -> None:
    assert "needs at least one approver" in rule_error(approvers={})
    assert "needs at least one approver" in rule_error(approvers={"users": [], "usergroups": []})


def test_a_require_approval_rule_needs_a_channel_or_direct_messages() -> None:
    assert "needs a channel, dm_approvers: true, or both" in rule_error(channel=None)
    assert rule(channel=None, dm_approvers=True).dm_approvers is True
    assert rule(dm_approvers=True).channel == "C0HIRING"


def test_required_approvals_cannot_exceed_the_users_when_there_are_no_usergroups() -> None:
    assert "could never be approved" in rule_error(required_approvals=2)
    assert rule(approvers={"users": ["U01", "U02"]}, required_approvals=2).required_approvals == 2
    assert rule(approvers={"usergroups": ["S0FIN"]}, required_approvals=5).required_approvals == 5


@pytest.mark.parametrize("required", [0, -1, 21])
def test_required_approvals_is_between_1_and_20(required: int) -> None:
    assert "required_approvals" in rule_error(
        approvers={"usergroups": ["S0FIN"]}, required_approvals=required
    )


def test_twenty_required_approvals_is_allowed() -> None:
    assert rule(approvers={"usergroups": ["S0FIN"]}, required_approvals=20).required_approvals == 20


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_allow_and_deny_rules_need_no_approvers_or_channel(decision: str) -> None:
    plain = Rule.model_validate({"action": "read_files", "decision": decision, "required_approvals": 3})
    assert plain.decision == decision
    assert plain.approvers.is_empty


@pytest.mark.parametrize("user", ["u01coo", "X01COO", "U0", "U01 COO", "U01-COO", 1234])
def test_user_ids_must_look_like_slack_user_ids(user: object) -> None:
    assert "approvers.users.0" in rule_error(approvers={"users": [user]})


@pytest.mark.parametrize("user", ["U01COO", "W0ENTERPRISE"])
def test_user_and_enterprise_user_ids_are_accepted(user: str) -> None:
    assert rule(approvers={"users": [user]}).approvers.users == [user]


@pytest.mark.parametrize("group", ["s0exec", "U0EXEC", "S0"])
def test_usergroup_ids_must_look_like_slack_usergroup_ids(group: str) -> None:
    assert "is not a Slack usergroup id" in rule_error(approvers={"usergroups": [group]})


def test_an_approver_listed_twice_is_rejected() -> None:
    assert "U01COO listed more than once" in rule_error(approvers={"users": ["U01COO", "U01COO"]})


@pytest.mark.parametrize("channel", ["D0DIRECT", "#hiring", "c0hiring", "C0"])
def test_channel_ids_must_be_public_or_private_channel_ids(channel: str) -> None:
    assert "is not a Slack channel id" in rule_error(channel=channel)


def test_private_channel_ids_are_accepted() -> None:
    assert rule(channel="G0PRIVATE").channel == "G0PRIVATE"


@pytest.mark.parametrize("action", ["send_offer_letter", "crm:contacts.delete-all", "delete_*", "file_[ab]?"])
def test_actions_may_be_names_or_globs(action: str) -> None:
    assert rule(action=action).action == action


@pytest.mark.parametrize("action", ["", "send offer", "a" * 201, "files/delete", "café", "a\n"])
def test_actions_outside_the_allowed_characters_are_rejected(action: str) -> None:
    assert "is not an action" in rule_error(action=action)


def test_an_action_of_200_characters_is_accepted() -> None:
    assert len(rule(action="a" * 200).action) == 200


@pytest.mark.parametrize("name", ["", " padded", "padded ", "two\nlines", "x" * 201])
def test_rule_names_are_one_printable_line(name: str) -> None:
    assert "is not a rule name" in rule_error(name=name)


def test_display_name_is_the_name_or_else_the_action() -> None:
    assert rule(name="Offer letters").display_name == "Offer letters"
    assert rule().display_name == "send_offer_letter"


def test_durations_are_read_as_seconds() -> None:
    timed = rule(expires_in="4h", remind_at=["30m"], mfa={"max_age": "10m"})
    assert (timed.expires_in, timed.mfa.max_age) == (14_400, 600)
    assert rule().expires_in == 86_400


@pytest.mark.parametrize("expires_in", [0, "0s", -60, "15x", "400d", True])
def test_expires_in_must_be_a_positive_duration(expires_in: object) -> None:
    assert "expires_in" in rule_error(expires_in=expires_in)


def test_mfa_max_age_zero_means_a_fresh_login_every_time() -> None:
    assert MfaRule(required=True, max_age=0).max_age == 0
    with pytest.raises(ValidationError, match="zero or more"):
        MfaRule.model_validate({"max_age": -1})


def test_mfa_defaults_to_not_required_with_strong_amr_values() -> None:
    mfa = rule().mfa
    assert (mfa.required, mfa.max_age, mfa.acr) == (False, 600, [])
    assert mfa.amr == ["mfa", "otp", "hwk", "swk", "fpt", "face"]


def test_mfa_amr_values_must_come_from_rfc_8176() -> None:
    with pytest.raises(ValidationError, match="'password' is not an RFC 8176 amr value") as raised:
        MfaRule.model_validate({"amr": ["otp", "password"]})
    assert raised.value.errors()[0]["loc"] == ("amr", 1)
    assert MfaRule.model_validate({"amr": ["pwd", "sms", "retina"]}).amr == ["pwd", "sms", "retina"]


def test_required_mfa_needs_an_amr_or_acr_value_to_check() -> None:
    with pytest.raises(ValidationError, match="amr and acr are both empty"):
        MfaRule.model_validate({"required": True, "amr": []})
    assert MfaRule.model_validate({"required": True, "amr": [], "acr": ["phr"]}).acr == ["phr"]
    assert MfaRule.model_validate({"required": False, "amr": []}).amr == []


@pytest.mark.parametrize("reminder", ["1%", "50%", "99%", "30m", "3600", "23h"])
def test_reminders_are_percentages_or_durations_kept_as_written(reminder: str) -> None:
    assert rule(remind_at=[reminder]).remind_at == [reminder]


def test_a_reminder_in_seconds_is_kept_as_text() -> None:
    assert rule(remind_at=[3600]).remind_at == ["3600"]


@pytest.mark.parametrize("reminder", ["0%", "100%", "150%", "50 %", "%", "soon", "0s", True, 2.5])
def test_reminders_that_are_neither_are_rejected(reminder: object) -> None:
    assert "is not a reminder" in rule_error(remind_at=["50%", reminder])


def test_a_reminder_at_or_after_expiry_is_rejected() -> None:
    assert "reminder '4h' is not before expires_in (14400s)" in rule_error(expires_in="4h", remind_at=["4h"])
    assert rule(expires_in="4h", remind_at=["3h", "99%"]).remind_at == ["3h", "99%"]


def test_escalate_to_must_name_someone_when_given() -> None:
    assert "escalate_to names nobody" in rule_error(escalate_to={})
    escalating = rule(escalate_to={"usergroups": ["S0CEO"]})
    assert escalating.escalate_to == Approvers(usergroups=["S0CEO"])


@pytest.mark.parametrize("path", ["params.salary", "params.candidate.home_address", "params.items.0"])
def test_redactions_are_dotted_paths_under_params(path: str) -> None:
    assert rule(redact=[path]).redact == [path]


@pytest.mark.parametrize("path", ["salary", "params", "params.", "params..salary", "body.salary"])
def test_redactions_outside_params_are_rejected(path: str) -> None:
    assert "is not a dotted path like params.salary" in rule_error(redact=[path])


@pytest.mark.parametrize(
    ("model", "fields"),
    [(Rule, {"action": "x", "decision": "deny", "timeout": 5}), (Approvers, {"user": ["U01"]})],
)
def test_unknown_fields_are_rejected_on_every_model(
    model: type[Rule | Approvers], fields: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate(fields)


def test_rules_cannot_be_changed_after_loading() -> None:
    loaded = rule()
    with pytest.raises(ValidationError, match="frozen"):
        loaded.decision = "allow"  # type: ignore[misc]


def test_every_rule_round_trips_through_its_json_snapshot() -> None:
    full = rule(
        name="Offer letters",
        approvers={"users": ["U01COO", "U02CFO"], "usergroups": ["S0EXEC"]},
        required_approvals=2,
        allow_self_approval=True,
        mfa={"required": True, "max_age": 0, "amr": ["hwk"], "acr": ["phrh"]},
        dm_approvers=True,
        expires_in="2d",
        remind_at=["50%", 3600, "1d"],
        escalate_to={"usergroups": ["S0CEO"]},
        redact=["params.salary", "params.address.street"],
    )
    for snapshot in [full, *load_policies(EXAMPLE).policy_set.policies]:
        dumped = snapshot.model_dump(mode="json")
        assert Rule.model_validate(dumped) == snapshot
        assert Rule.model_validate(dumped).model_dump(mode="json") == dumped


# --- evaluation -------------------------------------------------------------------------------------


def test_an_exact_rule_wins_over_an_earlier_glob() -> None:
    rules = policy_set(
        {"action": "delete_*", "decision": "deny"},
        {"action": "delete_draft", "decision": "allow"},
    )
    result = evaluate(rules, "delete_draft")
    assert (result.decision, result.rule_index, result.policy_name) == ("allow", 1, "delete_draft")
    assert result.rule == rules.policies[1]
    assert result.reason == "rule 'delete_draft' (policies[1]) matches action 'delete_draft' exactly: allow"


def test_the_first_matching_glob_in_file_order_wins() -> None:
    rules = policy_set(
        {"action": "read_*", "decision": "allow"},
        {"action": "send_offer_letter", "decision": "deny"},
        {"action": "read_secret_*", "decision": "deny"},
        {"name": "everything", "action": "*", "decision": "deny"},
    )
    result = evaluate(rules, "read_secret_keys")
    assert (result.decision, result.rule_index, result.policy_name) == ("allow", 0, "read_*")
    assert result.reason == (
        "rule 'read_*' (policies[0]) matches action 'read_secret_keys' by glob 'read_*': allow"
    )
    assert evaluate(rules, "write_files").policy_name == "everything"


def test_an_action_no_rule_matches_is_denied_by_default() -> None:
    rules = policy_set({"action": "read_*", "decision": "allow"})
    result = evaluate(rules, "wire_money")
    assert (result.decision, result.rule, result.rule_index) == ("deny", None, None)
    assert result.policy_name == "default"
    assert result.reason == "no policy matches action 'wire_money'; default is deny"


def test_glob_matching_is_case_sensitive_and_whole_name() -> None:
    rules = policy_set(
        {"action": "delete_*", "decision": "allow"},
        {"action": "read_?", "decision": "allow"},
    )
    assert evaluate(rules, "DELETE_user").decision == "deny"
    assert evaluate(rules, "soft_delete_user").decision == "deny"
    assert evaluate(rules, "read_a").decision == "allow"
    assert evaluate(rules, "read_ab").decision == "deny"


def test_an_exact_rule_matches_only_its_own_name() -> None:
    rules = policy_set({"action": "crm.read", "decision": "allow"})
    assert evaluate(rules, "crm.read").decision == "allow"
    assert evaluate(rules, "crmXread").decision == "deny"


def test_a_named_rule_is_reported_by_its_name() -> None:
    loaded = load_policies(EXAMPLE).policy_set
    result = evaluate(loaded, "refund_customer")
    assert (result.decision, result.policy_name) == ("require_approval", "refunds")
    assert result.reason.startswith("rule 'refunds' (policies[1]) matches action 'refund_customer' exactly")
