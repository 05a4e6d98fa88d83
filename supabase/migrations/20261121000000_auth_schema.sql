-- A minimal Supabase-compatible `auth` schema, created only where Supabase's own does not exist
-- (plain Postgres, the embedded server, CI). On a Supabase project every statement below is
-- skipped, so `supabase db push` leaves GoTrue's schema untouched.

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;

    if not exists (select 1 from pg_namespace where nspname = 'auth') then
        create schema auth;

        create table auth.users (
            id uuid primary key,
            email text unique,
            raw_user_meta_data jsonb not null default '{}'::jsonb,
            raw_app_meta_data jsonb not null default '{}'::jsonb,
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now()
        );

        -- Same contract as Supabase's: the `sub` claim of the request's JWT, or null.
        create function auth.uid() returns uuid
        language sql stable
        as $fn$
            select nullif(
                coalesce(
                    current_setting('request.jwt.claim.sub', true),
                    current_setting('request.jwt.claims', true)::jsonb ->> 'sub'
                ),
                ''
            )::uuid
        $fn$;

        create function auth.role() returns text
        language sql stable
        as $fn$
            select coalesce(
                current_setting('request.jwt.claim.role', true),
                current_setting('request.jwt.claims', true)::jsonb ->> 'role'
            )
        $fn$;

        grant usage on schema auth to anon, authenticated, service_role;
        grant execute on function auth.uid() to anon, authenticated, service_role;
        grant execute on function auth.role() to anon, authenticated, service_role;
    end if;
end
$$;
