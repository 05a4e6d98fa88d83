-- Built-in identity: password hashes, sessions and refresh tokens for accounts in auth.users.
-- Used only with IDENTITY_PROVIDER=builtin; harmless (empty) otherwise.

-- argon2id hash per account (PHC string). Kept out of auth.users so that Supabase's own
-- schema is never altered.
create table if not exists public.identity_credentials (
    user_id uuid primary key references auth.users (id) on delete cascade,
    password_hash text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- One row per sign-in. Revoking a session (logout, refresh-token reuse) ends every refresh
-- token issued in it.
create table if not exists public.identity_sessions (
    id uuid primary key,
    user_id uuid not null references auth.users (id) on delete cascade,
    created_at timestamptz not null default now(),
    revoked_at timestamptz,
    revoked_reason text
);

create index if not exists identity_sessions_user_idx on public.identity_sessions (user_id);

-- Refresh tokens are stored only as sha256 hex digests. `rotated_at` is set when a token is
-- exchanged; presenting it again means it leaked, and the whole session is revoked.
create table if not exists public.identity_refresh_tokens (
    token_hash text primary key,
    session_id uuid not null references public.identity_sessions (id) on delete cascade,
    user_id uuid not null references auth.users (id) on delete cascade,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    rotated_at timestamptz
);

create index if not exists identity_refresh_tokens_session_idx
    on public.identity_refresh_tokens (session_id);

alter table public.identity_credentials enable row level security;
alter table public.identity_sessions enable row level security;
alter table public.identity_refresh_tokens enable row level security;

-- One policy per operation, owner only (the project's rule for user tables).
create policy identity_credentials_select_own on public.identity_credentials
    for select to authenticated using ((select auth.uid()) = user_id);
create policy identity_credentials_insert_own on public.identity_credentials
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy identity_credentials_update_own on public.identity_credentials
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy identity_credentials_delete_own on public.identity_credentials
    for delete to authenticated using ((select auth.uid()) = user_id);

create policy identity_sessions_select_own on public.identity_sessions
    for select to authenticated using ((select auth.uid()) = user_id);
create policy identity_sessions_insert_own on public.identity_sessions
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy identity_sessions_update_own on public.identity_sessions
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy identity_sessions_delete_own on public.identity_sessions
    for delete to authenticated using ((select auth.uid()) = user_id);

create policy identity_refresh_tokens_select_own on public.identity_refresh_tokens
    for select to authenticated using ((select auth.uid()) = user_id);
create policy identity_refresh_tokens_insert_own on public.identity_refresh_tokens
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy identity_refresh_tokens_update_own on public.identity_refresh_tokens
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy identity_refresh_tokens_delete_own on public.identity_refresh_tokens
    for delete to authenticated using ((select auth.uid()) = user_id);

-- Defence in depth: the policies say who owns a row, but password hashes and token digests
-- are for the backend alone. On Supabase, default privileges grant public tables to the API
-- roles; take those grants back so the anon/authenticated keys can never read them.
revoke all on public.identity_credentials from anon, authenticated;
revoke all on public.identity_refresh_tokens from anon, authenticated;
