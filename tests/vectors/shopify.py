"""Shopify webhook HMAC vectors, computed exactly as Shopify's documented Python example does
(https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-5-verify-the-webhook:
base64 of HMAC-SHA256 over the raw body, keyed with the app's client secret); Shopify publishes
no verification SDK on PyPI. Run with `python3 tests/vectors/shopify.py`."""
import base64
import hashlib
import hmac

SECRET = "hush_3c1f0e9d8b7a6f5e4d3c2b1a0f9e8d7c"
BODY = b'{"id":820982911946154508,"email":"jon@example.com","total_price":"403.00"}'

digest = base64.b64encode(hmac.new(SECRET.encode("utf-8"), BODY, hashlib.sha256).digest()).decode()
assert hmac.compare_digest(digest, base64.b64encode(hmac.new(SECRET.encode(), BODY, hashlib.sha256).digest()).decode())
print(f'const SECRET: &str = "{SECRET}";')
print(f"const BODY: &[u8] = br#\"{BODY.decode()}\"#;")
print(f'const HMAC: &str = "{digest}";')
