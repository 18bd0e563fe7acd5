"""The tenant service: tenants, their hashed client secrets, scopes, rate limits and origins."""
