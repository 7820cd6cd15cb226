"""Fair use: per-tenant rate limits (`limiter`, `buckets`) and admission control while every
worker is saturated (`admission`, `fair`)."""
