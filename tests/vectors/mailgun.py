"""Mailgun webhook vectors, checked with Mailgun's own Python SDK (pip install mailgun==1.10.0).

Mailgun's "Securing webhooks" (documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks):
the body's `signature` object holds `timestamp`, `token` and `signature` = hex HMAC-SHA256(webhook
signing key, timestamp + token), no separator; the body itself is not signed. The SDK's
mailgun.security.SecurityGuard.verify_webhook (default max_age_seconds=900) accepts what this
script computes, and refuses a changed token.
"""
import hashlib
import hmac
import sys

# This file is named mailgun.py too: look the SDK up without its folder.
sys.path.pop(0)
from mailgun.security import SecurityGuard

KEY = "key-7d1a2b3c4d5e6f708192a3b4c5d6e7f8"
TS = "1764170000"
TOKEN = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
sig = hmac.new(KEY.encode(), (TS + TOKEN).encode(), hashlib.sha256).hexdigest()
assert SecurityGuard.verify_webhook(KEY, TOKEN, TS, sig, max_age_seconds=0)
assert not SecurityGuard.verify_webhook(KEY, TOKEN[:-1] + "1", TS, sig, max_age_seconds=0)
assert not SecurityGuard.verify_webhook("other", TOKEN, TS, sig, max_age_seconds=0)
print(f'const MAILGUN_KEY: &str = "{KEY}";')
print(f'const MAILGUN_TS: &str = "{TS}";')
print(f'const MAILGUN_TOKEN: &str = "{TOKEN}";')
print(f'const MAILGUN_SIG: &str = "{sig}";')
