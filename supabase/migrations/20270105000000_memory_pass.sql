-- The memory pass (issue #16, app/memory/): after a turn, a background model call turns the
-- exchange into memory operations on the agent's human block and archival memory.

-- One row per pass: the durable queue and its record. A finished turn inserts its pass as
-- `pending` (after the turn's `done`, off the reply's path); any process claims the oldest
-- pending pass of a user with no running one (`for update skip locked`), so several workers
-- and instances share the work and a user's passes run one at a time, in turn order. A pass
-- has a hard timeout, so a `running` row older than its lease belongs to a process that died:
-- it is put back to `pending` (retried) or, after its attempts, `abandoned`.
create table if not exists public.memory_passes (
    id bigint generated always as identity primary key,
    user_id uuid not null references auth.users (id) on delete cascade,
    -- No foreign key: deleting a conversation deletes its turns, and what the pass did stays
    -- true (its changes are still in memory).
    turn_id uuid not null unique,
    -- How many exchanges the pass reads, ending with its turn (every_n reads the last N).
    exchanges int not null default 1 check (exchanges >= 1),
    status text not null default 'pending' check (
        status in ('pending', 'running', 'completed', 'failed', 'refused', 'abandoned')
    ),
    attempts int not null default 0,
    owner text,
    claimed_at timestamptz,
    error text,
    operations int not null default 0,  -- changes applied
    model text,
    prompt_tokens int not null default 0,
    completion_tokens int not null default 0,
    cost numeric(20, 10) not null default 0,
    duration_ms int,
    created_at timestamptz not null default clock_timestamp(),
    finished_at timestamptz
);

-- At most one running pass per user, across every process: the claim relies on it.
create unique index if not exists memory_passes_one_running_idx
    on public.memory_passes (user_id) where status = 'running';
create index if not exists memory_passes_pending_idx
    on public.memory_passes (created_at, id) where status = 'pending';
create index if not exists memory_passes_running_idx
    on public.memory_passes (claimed_at) where status = 'running';
create index if not exists memory_passes_user_idx on public.memory_passes (user_id, id);

-- Every change a pass made to memory, with the turn it came from (GET /agent/memory/changes).
create table if not exists public.memory_changes (
    id bigint generated always as identity primary key,
    user_id uuid not null references auth.users (id) on delete cascade,
    pass_id bigint references public.memory_passes (id) on delete set null,
    turn_id uuid not null,
    op text not null check (op in ('add', 'update', 'delete', 'archive', 'condense')),
    -- The block label ('human') or 'archival'.
    target text not null,
    before text,
    after text,
    passage_id text,
    created_at timestamptz not null default clock_timestamp()
);

create index if not exists memory_changes_user_idx on public.memory_changes (user_id, id);

-- As for the other tables (20261121000800_api_role_grants.sql): RLS with one policy per
-- operation, the owner's own rows; the API roles may read their own and write none (only the
-- backend writes: the queue's states and the record of changes are its invariants).
do $$
declare
    name text;
begin
    foreach name in array array['memory_passes', 'memory_changes'] loop
        execute format('alter table public.%I enable row level security', name);
        execute format(
            'create policy %I on public.%I for select to authenticated '
            'using ((select auth.uid()) = user_id)', name || '_select_own', name);
        execute format(
            'create policy %I on public.%I for insert to authenticated '
            'with check ((select auth.uid()) = user_id)', name || '_insert_own', name);
        execute format(
            'create policy %I on public.%I for update to authenticated '
            'using ((select auth.uid()) = user_id) with check ((select auth.uid()) = user_id)',
            name || '_update_own', name);
        execute format(
            'create policy %I on public.%I for delete to authenticated '
            'using ((select auth.uid()) = user_id)', name || '_delete_own', name);
        execute format('revoke all on public.%I from anon', name);
        execute format(
            'revoke insert, update, delete, truncate on public.%I from anon, authenticated', name);
        execute format('grant select on public.%I to authenticated', name);
    end loop;
end
$$;
