-- LLM-route reservations (built-in billing). A call is admitted only if its worst case fits:
-- `budgets.reserved` holds the worst-case cost of the calls in flight, and admission is one
-- conditional UPDATE (`spend + reserved + worst_case <= max_budget`), which Postgres
-- re-evaluates on the latest row version after waiting for a concurrent admission's lock, so
-- no two calls are admitted on the same headroom. Settling (the call's real cost into
-- `spend`) or releasing takes the reservation's row and its amount off `reserved` in one
-- statement.
--
-- Each reservation is also a row with an expiry, so one left by a crashed process cannot hold
-- the budget forever: an admission refused while expired rows exist deletes them (and takes
-- their amounts off `reserved`) and tries again. Whoever deletes a row (settle, release, or
-- that sweep) is the only one to subtract its amount.
alter table public.budgets
    add column if not exists reserved numeric(20, 10) not null default 0 check (reserved >= 0);

create table if not exists public.budget_reservations (
    id uuid primary key,
    user_id uuid not null references auth.users (id) on delete cascade,
    amount numeric(20, 10) not null check (amount >= 0),
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);

create index if not exists budget_reservations_user_expiry
    on public.budget_reservations (user_id, expires_at);

alter table public.budget_reservations enable row level security;

create policy budget_reservations_select_own on public.budget_reservations
    for select to authenticated using ((select auth.uid()) = user_id);
create policy budget_reservations_insert_own on public.budget_reservations
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy budget_reservations_update_own on public.budget_reservations
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy budget_reservations_delete_own on public.budget_reservations
    for delete to authenticated using ((select auth.uid()) = user_id);

-- Only the backend writes it (as every app table: 20261121000800_api_role_grants.sql).
revoke insert, update, delete, truncate on public.budget_reservations from anon, authenticated;
revoke all on public.budget_reservations from anon;
