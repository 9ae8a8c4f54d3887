"""Sentry integration-platform webhook vectors.

Source: Sentry's own server code, getsentry/sentry, SentryApp.build_signature
(src/sentry/sentry_apps/models/sentry_app.py) and AppPlatformEvent.sentry_headers
(src/sentry/sentry_apps/api/serializers/app_platform_event.py): the signature is
hmac.new(client_secret.encode("utf-8"), body.encode("utf-8"), sha256).hexdigest(), over the body
only; Sentry-Hook-Timestamp is sent but not signed. Sentry publishes no vector and no verification
SDK, so this script re-runs build_signature exactly as written there.
"""
import hmac
from hashlib import sha256


def build_signature(client_secret: str, body: str) -> str:
    # As in SentryApp.build_signature.
    return hmac.new(key=client_secret.encode("utf-8"), msg=body.encode("utf-8"), digestmod=sha256).hexdigest()


SECRET = "6b9d3d8a0e5c4f7a8b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a"
BODY = '{"action": "created", "installation": {"uuid": "a8e5d37a-696c-4c54-adb5-b3f28d64c7de"}, "data": {"issue": {"id": "1170820242"}}, "actor": {"type": "application", "id": "sentry", "name": "Sentry"}}'
print(f"const SENTRY_SECRET: &str = {SECRET!r};".replace("'", '"'))
print(f"const SENTRY_BODY: &[u8] = br#\"{BODY}\"#;")
print(f'const SENTRY_SIG: &str = "{build_signature(SECRET, BODY)}";')
