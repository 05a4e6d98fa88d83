-- Usage per user per UTC day, and the built-in billing ledger (one budget row per user).

-- One row per (user, UTC day). The chat turn that completes adds to it with
-- INSERT ... ON CONFLICT DO UPDATE in the same transaction, so counters never drift from turns.
create table if not exists public.usage_daily (
    user_id uuid not null references auth.users (id) on delete cascade,
    day date not null,
    messages integer not null default 0 check (messages >= 0),
    prompt_tokens bigint not null default 0 check (prompt_tokens >= 0),
    completion_tokens bigint not null default 0 check (completion_tokens >= 0),
    total_tokens bigint not null default 0 check (total_tokens >= 0),
    cost numeric(20, 10) not null default 0 check (cost >= 0),
    updated_at timestamptz not null default now(),
    primary key (user_id, day)
);

alter table public.usage_daily enable row level security;

create policy usage_daily_select_own on public.usage_daily
    for select to authenticated using ((select auth.uid()) = user_id);
create policy usage_daily_insert_own on public.usage_daily
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy usage_daily_update_own on public.usage_daily
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy usage_daily_delete_own on public.usage_daily
    for delete to authenticated using ((select auth.uid()) = user_id);

-- Built-in billing: the budget of the current period. `spend` is charged atomically
-- (`spend = spend + $cost`). Period boundaries are `period_anchor + k * budget_duration`
-- (calendar months for `Nmo`, computed from the anchor so Jan 31 -> Feb 28/29 -> Mar 31);
-- a period that has ended is rolled forward (spend 0) by one conditional UPDATE, so two
-- racing requests reset it once.
create table if not exists public.budgets (
    user_id uuid primary key references auth.users (id) on delete cascade,
    max_budget numeric(20, 10) not null check (max_budget >= 0),
    budget_duration text not null,
    period_anchor timestamptz not null,
    period_start timestamptz not null,
    spend numeric(20, 10) not null default 0 check (spend >= 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

alter table public.budgets enable row level security;

create policy budgets_select_own on public.budgets
    for select to authenticated using ((select auth.uid()) = user_id);
create policy budgets_insert_own on public.budgets
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy budgets_update_own on public.budgets
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy budgets_delete_own on public.budgets
    for delete to authenticated using ((select auth.uid()) = user_id);
