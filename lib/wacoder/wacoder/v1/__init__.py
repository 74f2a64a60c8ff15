"""Generated gRPC stubs (package wacoder.v1). Do not edit: `make protos` writes them."""
