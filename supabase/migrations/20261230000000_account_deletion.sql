-- Account deletion (issue #15 item 4): the saga's state, one row per account being deleted.
--
-- No foreign key to auth.users: the row must outlive the identity it deletes. It holds no
-- personal data (no email): the user's id, the agent id to delete upstream, and the steps'
-- progress. While the saga runs, every instance refuses the user's tokens (403
-- account_disabled, app/auth/revocations.py reads these rows). Once every step is done the
-- row stays only until the user's last access token has expired (`forget_after`) and the last
-- sweep ran (`swept_at`), so those tokens keep being refused; the retry task then purges it.
create table if not exists public.account_deletions (
    user_id uuid primary key,
    status text not null default 'pending' check (status in ('pending', 'done')),
    -- The agent the profile pointed at when the deletion started (the profile is deleted by a
    -- later step); every other agent of the user is found by the provider (tag/user id).
    agent_id text,
    agent_done_at timestamptz,
    billing_done_at timestamptz,
    identity_done_at timestamptz,
    data_done_at timestamptz,
    requested_at timestamptz not null default clock_timestamp(),
    completed_at timestamptz,
    forget_after timestamptz,
    attempts integer not null default 0,
    -- Short error codes of the last attempt's failed steps (never a message).
    last_error text,
    next_attempt_at timestamptz not null default clock_timestamp(),
    -- After the saga, one more pass of the billing and agent deletes once every instance has
    -- learnt of the deletion (an instance that had not could have made the LiteLLM user again
    -- by reading its budget); the row is purged only after it.
    swept_at timestamptz,
    -- A worker (request or retry task, any instance) claims a row until lease_until.
    lease_until timestamptz
);

create index if not exists account_deletions_due_idx
    on public.account_deletions (next_attempt_at) where swept_at is null;

alter table public.account_deletions enable row level security;

-- One policy per operation, owner only (the project's rule for user tables); the grants below
-- keep the API roles out entirely: only the backend reads and writes it.
create policy account_deletions_select_own on public.account_deletions
    for select to authenticated using ((select auth.uid()) = user_id);
create policy account_deletions_insert_own on public.account_deletions
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy account_deletions_update_own on public.account_deletions
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy account_deletions_delete_own on public.account_deletions
    for delete to authenticated using ((select auth.uid()) = user_id);

revoke all on public.account_deletions from anon, authenticated;
