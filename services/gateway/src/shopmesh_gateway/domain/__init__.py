"""The gateway's rules, free of I/O: product-page validation and selection, rate-limit buckets."""
