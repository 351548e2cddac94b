"""The recommendations rules: request validation, co-purchase counting, ranking. No I/O, no grpc, no SQL."""
