-- When a user's agent was found gone upstream (deleted on the agent server) and a new one was
-- made in its place: when, and why. GET /agent/status tells the user what was lost.
alter table public.profiles add column if not exists agent_replaced_at timestamptz;
alter table public.profiles add column if not exists agent_replaced_reason text;
