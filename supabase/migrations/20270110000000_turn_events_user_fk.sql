-- turn_events.user_id no longer references auth.users (issue #17: CPU per chat turn).
--
-- Every streamed event is a row, about 23 per turn, and each row's foreign keys are checked
-- one by one: a `select ... for key share` on the referenced row, which also writes a row
-- lock. The reference to the user added nothing: an event's turn is referenced (its key is
-- still checked, and deleting the turn deletes its events), and the turn references the user
-- with `on delete cascade`, so deleting a user still deletes every event through its turns.
-- user_id stays on the row, equal to its turn's, for the row-level-security policies.
alter table public.turn_events drop constraint if exists turn_events_user_id_fkey;
