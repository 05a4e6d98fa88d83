"""The admin API (issue #15): users, budgets, platform usage and the audit trail."""
