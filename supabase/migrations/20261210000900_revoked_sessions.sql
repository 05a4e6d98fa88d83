-- Sessions whose access tokens must stop working before they expire: logout, refresh-token
-- reuse (the whole session), later an account disabled. Every instance loads the rows into
-- memory and polls for new ones (app/auth/revocations.py), so checking a token costs no query.
-- A row is needed only while a token of its session can still be unexpired: `forget_after`.
-- No foreign key to auth.users: with Supabase Auth the session and user are Supabase's, and a
-- revocation must outlive nothing but the tokens.
create table if not exists public.revoked_sessions (
    session_id uuid primary key,
    user_id uuid not null,
    reason text not null,
    revoked_at timestamptz not null default clock_timestamp(),
    forget_after timestamptz not null
);

create index if not exists revoked_sessions_revoked_at_idx on public.revoked_sessions (revoked_at);
create index if not exists revoked_sessions_forget_after_idx
    on public.revoked_sessions (forget_after);

alter table public.revoked_sessions enable row level security;

-- One policy per operation, owner only (the project's rule for user tables); the grants below
-- keep the API roles out entirely: only the backend reads and writes it.
create policy revoked_sessions_select_own on public.revoked_sessions
    for select to authenticated using ((select auth.uid()) = user_id);
create policy revoked_sessions_insert_own on public.revoked_sessions
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy revoked_sessions_update_own on public.revoked_sessions
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy revoked_sessions_delete_own on public.revoked_sessions
    for delete to authenticated using ((select auth.uid()) = user_id);

revoke all on public.revoked_sessions from anon, authenticated;
