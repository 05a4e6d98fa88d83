-- Similarity search for the built-in agent's archival memory, where pgvector exists (the
-- embedded Postgres, Supabase). Elsewhere (a plain Postgres without the extension) this
-- migration does nothing and archival search stays full-text only.
--
-- `embedding` has no fixed dimension: it follows the configured embeddings model, and the
-- query compares only vectors made by the same model (`embedding_model`) with the same number
-- of dimensions, so changing EMBEDDINGS_MODEL or EMBEDDINGS_DIMENSIONS never breaks a search
-- (older vectors are simply not compared; their passages are still found by full-text search).
--
-- No HNSW/IVFFlat index on purpose: every search is filtered to one agent, whose archive is
-- small (a person's memories, not a corpus). An exact scan of that agent's rows (found through
-- archival_passages_agent_created_idx) is fast and exact, whereas an approximate index
-- searched first and filtered by agent afterwards would miss that agent's passages.
do $$
begin
    if exists (select 1 from pg_available_extensions where name = 'vector') then
        create extension if not exists vector;
        -- Also here (not only in 20261121000400): a database where the extension became
        -- available after that migration ran gets the column now.
        alter table public.archival_passages add column if not exists embedding vector;
        alter table public.archival_passages add column if not exists embedding_model text;
    end if;
end
$$;
