-- Administration (issue #15): who changed what for whom, and accounts an admin disabled.

-- A disabled account is refused on every authenticated route (403 account_disabled) and its
-- sessions are ended; re-enabling clears the column (old sessions stay ended).
alter table public.profiles add column if not exists disabled_at timestamptz;

-- One row per admin action, written in the same transaction as the change when the change is
-- in this database (disable, enable), else right after it succeeded (a budget set in billing).
-- No foreign keys: the trail must outlive the accounts it names.
create table if not exists public.admin_audit (
    id bigint generated always as identity primary key,
    admin_user_id uuid not null,
    action text not null,
    target_user_id uuid,
    before jsonb,
    after jsonb,
    created_at timestamptz not null default clock_timestamp()
);

create index if not exists admin_audit_target_idx on public.admin_audit (target_user_id, id);

-- RLS on and no policy: the API roles see nothing; only the backend reads and writes it.
alter table public.admin_audit enable row level security;
revoke all on public.admin_audit from anon, authenticated;

-- When an admin last ended all of a user's sessions (disabling the account): access tokens of
-- that user issued before it are refused (Supabase's sessions are not in our tables, so this
-- is how theirs end). Kept after re-enabling: old sessions stay ended. Every instance loads
-- the rows with a time or a disabled_at into memory and polls them (app/auth/revocations.py).
alter table public.profiles add column if not exists sessions_revoked_at timestamptz;
create index if not exists profiles_blocked_idx on public.profiles (id)
    where disabled_at is not null or sessions_revoked_at is not null;
