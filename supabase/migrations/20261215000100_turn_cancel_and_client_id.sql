-- Stop and safe retries (issue 13). `turns.status` already allows 'cancelled'.

-- The client's id for the message that made the turn (body `client_message_id` or the
-- `Idempotency-Key` header): a repeat with the same id attaches to this turn instead of making
-- a second one. Unique per user; many turns have none.
alter table public.turns add column if not exists client_message_id text
    check (client_message_id is null or char_length(client_message_id) between 1 and 100);
create unique index if not exists turns_user_client_message_id
    on public.turns (user_id, client_message_id) where client_message_id is not null;

-- A stop asked for on an instance that does not run the turn: the owning instance reads it
-- when it renews its leases and stops the turn there.
alter table public.turns add column if not exists cancel_requested_at timestamptz;
