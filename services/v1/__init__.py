"""Generated gRPC stubs for the dbintel.v1 protocol (scripts/generate_protos.py). Do not edit."""
