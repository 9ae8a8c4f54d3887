"""Calendly webhook vectors.

Calendly's "Webhook signatures" (developer.calendly.com/api-docs/overview/webhooks/webhook-signatures):
`Calendly-Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(signing key, t + "." + raw body)>`,
and its example rejects a `t` more than three minutes (180 000 ms) old. Calendly publishes no vector
and no verification SDK, so this script computes one with hmac.
"""
import hashlib
import hmac

KEY = "calendly-signing-key-5f4e3d2c1b0a"
T = 1764170000
BODY = '{"event":"invitee.created","created_at":"2025-11-26T15:13:20.000000Z","created_by":"https://api.calendly.com/users/AAAAAAAAAAAAAAAA","payload":{"uri":"https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/AAAAAAAAAAAAAAAA"}}'
sig = hmac.new(KEY.encode(), f"{T}.".encode() + BODY.encode(), hashlib.sha256).hexdigest()
print(f'const CALENDLY_KEY: &str = "{KEY}";')
print(f"const CALENDLY_TS: i64 = {T};")
print(f'const CALENDLY_BODY: &[u8] = br#"{BODY}"#;')
print(f'const CALENDLY_HEADER: &str = "t={T},v1={sig}";')
