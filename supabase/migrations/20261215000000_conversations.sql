-- Conversations: a user has many, all with their one agent. Memory (blocks, archival) is the
-- agent's and shared by all of them; each conversation has its own message window (the
-- built-in agent keys its messages by conversation, Letta keeps its own conversations).

create table if not exists public.conversations (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references auth.users (id) on delete cascade,
    -- null until set by the user or taken from the first message (auto-title)
    title text,
    -- The conversation a message without a conversation id goes to (created lazily; at most
    -- one per user). Deleting it is allowed: the next such message creates a new one.
    is_default boolean not null default false,
    -- The provider's own conversation (Letta's conversation id), created on first use, and
    -- the agent it belongs to: a reset or a healed agent is a new agent, whose conversations
    -- must be created again.
    external_id text,
    external_agent_id text,
    created_at timestamptz not null default now(),
    last_activity_at timestamptz not null default now()
);

create unique index if not exists conversations_one_default_per_user
    on public.conversations (user_id) where is_default;
-- The list: newest activity first, keyset (last_activity_at, id).
create index if not exists conversations_user_activity_idx
    on public.conversations (user_id, last_activity_at desc, id desc);

-- Nullable only for rows written before this migration that it could not place (none: every
-- existing turn is backfilled below); the app always sets it. Deleting a conversation
-- deletes its turns (and, through turns, their events).
alter table public.turns
    add column if not exists conversation_id uuid references public.conversations (id) on delete cascade;
create index if not exists turns_conversation_created_idx
    on public.turns (conversation_id, created_at desc, id desc);

-- The built-in agent's message window, per conversation. No foreign key: the agent's tables
-- are the provider's and know our conversations only by id (null: no conversation).
alter table public.agent_messages add column if not exists conversation_id uuid;
drop index if exists public.agent_messages_window_idx;
create index if not exists agent_messages_window_idx
    on public.agent_messages (agent_id, conversation_id, id) where in_context;

-- Backfill: every user with turns or built-in agent messages gets a default conversation
-- holding all of them (the conversation they had before there were several).
insert into public.conversations (user_id, is_default, created_at, last_activity_at)
select u.user_id, true, min(u.first_at), max(u.last_at)
from (
    select user_id, min(created_at) as first_at, max(created_at) as last_at
    from public.turns group by user_id
    union all
    select user_id, min(created_at), max(created_at) from public.agent_messages group by user_id
) u
group by u.user_id
on conflict (user_id) where is_default do nothing;

update public.turns t set conversation_id = c.id
from public.conversations c
where c.user_id = t.user_id and c.is_default and t.conversation_id is null;

update public.agent_messages m set conversation_id = c.id
from public.conversations c
where c.user_id = m.user_id and c.is_default and m.conversation_id is null;

alter table public.conversations enable row level security;

create policy conversations_select_own on public.conversations
    for select to authenticated using ((select auth.uid()) = user_id);
create policy conversations_insert_own on public.conversations
    for insert to authenticated with check ((select auth.uid()) = user_id);
create policy conversations_update_own on public.conversations
    for update to authenticated using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id);
create policy conversations_delete_own on public.conversations
    for delete to authenticated using ((select auth.uid()) = user_id);

-- As for the other tables (20261121000800_api_role_grants.sql): the API roles may read their
-- own conversations and write none (titles change through the API, not PostgREST).
revoke all on public.conversations from anon;
revoke insert, update, delete, truncate on public.conversations from anon, authenticated;
grant select on public.conversations to authenticated;
