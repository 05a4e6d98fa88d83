"""Supabase Auth (GoTrue) through supabase-py's auth client."""
