"""Policies: the policy file's rules and how an action is judged, and the versions that were loaded."""
