"""The Slack edge: Bolt listeners, Block Kit card builders and the ids shared with manifest.yml."""
