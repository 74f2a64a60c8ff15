"""The seed's user-facing error templates: one wording everywhere a user can meet them."""

from __future__ import annotations

UNAUTHORIZED = "🔒 Your phone number is not authorized. Please contact the administrator."
RATE_LIMIT = "⏱️ Too many requests. Please wait a moment before trying again."
CONNECTION = "❌ Connection error. The service is temporarily unavailable."
INVALID_COMMAND = "❓ Unknown command: {command}. Type /help for available commands."
PROJECT_NOT_FOUND = "📂 Project not found. Use /list to see your projects."
