-- Profiles: one row per account, keyed by the auth user id.
create table if not exists public.profiles (
    id uuid primary key references auth.users (id) on delete cascade,
    email text not null,
    display_name text,
    agent_id text,
    agent_provider text,
    billing_provider text,
    billing_ref text,
    -- The user's LiteLLM virtual key, encrypted with ENCRYPTION_KEY (Fernet); never returned.
    billing_key_encrypted text,
    provisioning_status text not null default 'pending'
        check (provisioning_status in ('pending', 'ready', 'degraded')),
    provisioning_error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create index if not exists profiles_email_idx on public.profiles (lower(email));

alter table public.profiles enable row level security;

-- One policy per operation: a user sees and edits only their own row.
create policy profiles_select_own on public.profiles
    for select to authenticated using ((select auth.uid()) = id);
create policy profiles_insert_own on public.profiles
    for insert to authenticated with check ((select auth.uid()) = id);
create policy profiles_update_own on public.profiles
    for update to authenticated using ((select auth.uid()) = id)
    with check ((select auth.uid()) = id);
create policy profiles_delete_own on public.profiles
    for delete to authenticated using ((select auth.uid()) = id);
