"""Local stand-ins for Slack's Web API and for a company identity provider.

One implementation serves two purposes: the tests drive the real slack_sdk / slack-bolt and OIDC code
against them over HTTP, and the sandbox (trying the service without a Slack workspace or an IdP) is to
be built on the same ones. They are never used when Slack or an IdP is configured.
"""
