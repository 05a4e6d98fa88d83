-- Chat: one row per exchange (`turns`) and what was streamed for it (`turn_events`).

create table if not exists public.turns (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references auth.users (id) on delete cascade,
    user_message text not null,
    assistant_response text not null default '',
    status text not null default 'streaming'
        check (status in ('streaming', 'completed', 'failed', 'cancelled')),
    error text,
    model text,
    prompt_tokens integer not null default 0 check (prompt_tokens >= 0),
    completion_tokens integer not null default 0 check (completion_tokens >= 0),
    total_tokens integer not null default 0 check (total_tokens >= 0),
    cost numeric(20, 10) not null default 0 check (cost >= 0),
    usage_estimated boolean not null default false,
    agent_run_id text,
    metadata jsonb not null default '{}'::jsonb,
    -- The app process running the turn, and its lease: a live process renews `heartbeat_at`
    -- of its streaming turns; one left `streaming` with an old heartbeat was orphaned by a
    -- crash and is marked failed ("interrupted") at the next start or the user's next turn.
    instance_id text,
    heartbeat_at timestamptz not null default now(),
    created_at timestamptz not null default now(),
    completed_at timestamptz,
    -- Full-text search over both sides of the exchange. 'english' stems ("remembered"
    -- finds "remember"); queries must use the same configuration.
    search tsvector generated always as (
        to_tsvector('english', user_message || ' ' || assistant_response)
    ) stored
);

-- At most one streaming turn per user, whatever the number of app instances: the guarantee
-- behind the advisory lock taken when a turn is admitted.
create unique index if not exists turns_one_streaming_per_user
    on public.turns (user_id) where status = 'streaming';
-- History pages: newest first, keyset (created_at, id).
create index if not exists turns_user_created_idx
    on public.turns (user_id, created_at desc, id desc);
create index if not exists turns_search_idx on public.turns using gin (search);
-- The crash sweep looks only at streaming turns.
create index if not exists turns_streaming_heartbeat_idx
    on public.turns (heartbeat_at) where status = 'streaming';

alter table public.turns enable row level security;

create policy turns_select_own on public.turns
    for select to authenticated using ((select auth.uid()) = user_id);
create policy turns_insert_own on public.turns
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy turns_update_own on public.turns
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy turns_delete_own on public.turns
    for delete to authenticated using ((select auth.uid()) = user_id);

-- Every SSE event of a turn, by its sequence number (the SSE `id:`), for Last-Event-ID resume.
-- user_id is repeated here so that the row-level-security policies stay one simple comparison.
create table if not exists public.turn_events (
    turn_id uuid not null references public.turns (id) on delete cascade,
    seq integer not null check (seq >= 1),
    user_id uuid not null references auth.users (id) on delete cascade,
    event text not null
        check (event in ('turn', 'delta', 'tool', 'message', 'usage', 'error', 'done')),
    data jsonb not null,
    created_at timestamptz not null default now(),
    primary key (turn_id, seq)
);

create index if not exists turn_events_user_idx on public.turn_events (user_id);

alter table public.turn_events enable row level security;

create policy turn_events_select_own on public.turn_events
    for select to authenticated using ((select auth.uid()) = user_id);
create policy turn_events_insert_own on public.turn_events
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy turn_events_update_own on public.turn_events
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy turn_events_delete_own on public.turn_events
    for delete to authenticated using ((select auth.uid()) = user_id);
