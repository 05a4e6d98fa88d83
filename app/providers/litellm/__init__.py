"""LiteLLM proxy: budgeted users and personal virtual keys through its management API."""
