"""The small library every WhatsApp-Coder service shares: settings, Redis, logging, gRPC, keys."""
