-- The backend is the only writer of the app's tables: it connects as a privileged role and
-- keeps invariants that RLS cannot express (budget spend, usage counters, turn state, memory
-- limits). On Supabase, default privileges grant every public table to the API roles, so a
-- user holding the anon key and their own token could otherwise reset their own spend or
-- rewrite usage through PostgREST, within the per-operation policies. Take the writes back;
-- keep reads of one's own rows (the policies still apply), and let a user rename themselves.
do $$
declare
    t record;
begin
    for t in
        select tablename from pg_tables
        where schemaname = 'public' and tablename <> 'schema_migrations'
    loop
        execute format('revoke insert, update, delete, truncate on public.%I from anon, authenticated', t.tablename);
        execute format('revoke all on public.%I from anon', t.tablename);
    end loop;
end
$$;

-- Readable by their owner (RLS policies filter to `(select auth.uid()) = user_id`).
do $$
declare
    name text;
begin
    foreach name in array array[
        'profiles', 'budgets', 'usage_daily', 'turns', 'turn_events',
        'agents', 'memory_blocks', 'archival_passages', 'agent_messages'
    ] loop
        if to_regclass('public.' || name) is not null then
            execute format('grant select on public.%I to authenticated', name);
        end if;
    end loop;
end
$$;

grant update (display_name) on public.profiles to authenticated;

-- Tables that later migrations create (as this role) get no API-role writes either.
alter default privileges in schema public revoke insert, update, delete, truncate on tables from anon, authenticated;
