"""Generated Protocol Buffers and gRPC code for the adaptd API (the build adds the modules)."""
