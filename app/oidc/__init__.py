"""OpenID Connect step-up: the IdP client, ID-token verification, and the browser endpoints."""
