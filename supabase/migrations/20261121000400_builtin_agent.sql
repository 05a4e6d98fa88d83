-- The built-in memory agent: one agent per user, its core memory blocks, its archival memory
-- (full-text searchable; a pgvector column too where the extension exists) and its own
-- conversation window (messages are kept after summarization, so they stay searchable).

create table if not exists public.agents (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null unique references auth.users (id) on delete cascade,
    model text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table if not exists public.memory_blocks (
    agent_id uuid not null references public.agents (id) on delete cascade,
    user_id uuid not null references auth.users (id) on delete cascade,
    label text not null,
    value text not null default '',
    char_limit integer not null check (char_limit > 0),
    description text,
    -- Bumped on every write: lets a client (or a test) see that the agent changed a block.
    version integer not null default 1,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (agent_id, label),
    check (char_length(value) <= char_limit)
);

create table if not exists public.archival_passages (
    id uuid primary key default gen_random_uuid(),
    agent_id uuid not null references public.agents (id) on delete cascade,
    user_id uuid not null references auth.users (id) on delete cascade,
    text text not null,
    tags text[] not null default '{}',
    tsv tsvector generated always as (to_tsvector('english', text)) stored,
    created_at timestamptz not null default now()
);

create index if not exists archival_passages_agent_created_idx
    on public.archival_passages (agent_id, created_at desc, id desc);
create index if not exists archival_passages_tsv_idx on public.archival_passages using gin (tsv);

create table if not exists public.agent_messages (
    id bigint generated always as identity primary key,
    agent_id uuid not null references public.agents (id) on delete cascade,
    user_id uuid not null references auth.users (id) on delete cascade,
    -- 'summary': a recall summary of older messages, shown in the system prompt.
    role text not null check (role in ('user', 'assistant', 'tool', 'summary')),
    content text not null default '',
    tool_calls jsonb,
    tool_call_id text,
    tool_name text,
    tokens integer not null default 0,
    -- false once folded into a summary (or a newer summary): out of the window, still searchable.
    in_context boolean not null default true,
    summarized_at timestamptz,
    tsv tsvector generated always as (to_tsvector('english', content)) stored,
    created_at timestamptz not null default now()
);

create index if not exists agent_messages_window_idx
    on public.agent_messages (agent_id, id) where in_context;
create index if not exists agent_messages_agent_idx on public.agent_messages (agent_id, id);
create index if not exists agent_messages_tsv_idx on public.agent_messages using gin (tsv);

-- Similarity search where pgvector exists (the embedded Postgres, Supabase); plain full-text
-- search elsewhere. The column has no fixed dimension: it follows the embeddings model.
do $$
begin
    if exists (select 1 from pg_available_extensions where name = 'vector') then
        create extension if not exists vector;
        alter table public.archival_passages add column if not exists embedding vector;
    end if;
end
$$;

alter table public.agents enable row level security;
alter table public.memory_blocks enable row level security;
alter table public.archival_passages enable row level security;
alter table public.agent_messages enable row level security;

create policy agents_select_own on public.agents
    for select to authenticated using ((select auth.uid()) = user_id);
create policy agents_insert_own on public.agents
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy agents_update_own on public.agents
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy agents_delete_own on public.agents
    for delete to authenticated using ((select auth.uid()) = user_id);

create policy memory_blocks_select_own on public.memory_blocks
    for select to authenticated using ((select auth.uid()) = user_id);
create policy memory_blocks_insert_own on public.memory_blocks
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy memory_blocks_update_own on public.memory_blocks
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy memory_blocks_delete_own on public.memory_blocks
    for delete to authenticated using ((select auth.uid()) = user_id);

create policy archival_passages_select_own on public.archival_passages
    for select to authenticated using ((select auth.uid()) = user_id);
create policy archival_passages_insert_own on public.archival_passages
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy archival_passages_update_own on public.archival_passages
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy archival_passages_delete_own on public.archival_passages
    for delete to authenticated using ((select auth.uid()) = user_id);

create policy agent_messages_select_own on public.agent_messages
    for select to authenticated using ((select auth.uid()) = user_id);
create policy agent_messages_insert_own on public.agent_messages
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy agent_messages_update_own on public.agent_messages
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy agent_messages_delete_own on public.agent_messages
    for delete to authenticated using ((select auth.uid()) = user_id);
