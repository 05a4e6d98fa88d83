"""Accounts: register, login, refresh, logout, me, profile; the provisioning saga."""
