-- Usage per user, model and quarter hour (UTC), for the usage report per day by model in the
-- caller's time zone. Every time zone in use is a whole number of quarter hours from UTC
-- (Asia/Kolkata +5:30, Asia/Kathmandu +5:45, Pacific/Chatham +12:45), so a local day is an
-- exact set of buckets in any of them. `usage_daily` (per UTC day) stays: the same statement
-- writes both (app/usage/repository.py), in the turn's transaction.
create table if not exists public.usage_by_model (
    user_id uuid not null references auth.users (id) on delete cascade,
    bucket timestamptz not null check (
        extract(epoch from bucket)::bigint % 900 = 0
    ),
    model text not null,
    messages integer not null default 0 check (messages >= 0),
    prompt_tokens bigint not null default 0 check (prompt_tokens >= 0),
    completion_tokens bigint not null default 0 check (completion_tokens >= 0),
    total_tokens bigint not null default 0 check (total_tokens >= 0),
    cost numeric(20, 10) not null default 0 check (cost >= 0),
    updated_at timestamptz not null default now(),
    primary key (user_id, bucket, model)
);

alter table public.usage_by_model enable row level security;

-- One policy per operation, as on every user table (the writes are revoked below anyway).
create policy usage_by_model_select_own on public.usage_by_model
    for select to authenticated using ((select auth.uid()) = user_id);
create policy usage_by_model_insert_own on public.usage_by_model
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy usage_by_model_update_own on public.usage_by_model
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy usage_by_model_delete_own on public.usage_by_model
    for delete to authenticated using ((select auth.uid()) = user_id);

-- Readable by its owner through the API roles, like usage_daily; written by the backend only.
revoke insert, update, delete, truncate on public.usage_by_model from anon, authenticated;
revoke all on public.usage_by_model from anon;
grant select on public.usage_by_model to authenticated;

-- What was counted before this table existed: per UTC day, model unknown. Those days are
-- reported at UTC midnight (exact in UTC, approximate in other time zones).
insert into public.usage_by_model
    (user_id, bucket, model, messages, prompt_tokens, completion_tokens, total_tokens, cost)
select user_id, (day::timestamp at time zone 'UTC'), 'unknown',
       messages, prompt_tokens, completion_tokens, total_tokens, cost
from public.usage_daily
on conflict (user_id, bucket, model) do nothing;
