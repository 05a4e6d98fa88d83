"""The Letta agent provider (`AGENT_PROVIDER=letta`): `letta-client` against a Letta server."""
