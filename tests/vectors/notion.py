"""Notion webhook vectors.

Notion's webhooks reference (developers.notion.com/reference/webhooks, "Validating event
payloads"): `X-Notion-Signature: sha256=<hex HMAC-SHA256(verification_token, raw body)>`; its
example is `sha256=${createHmac("sha256", verificationToken).update(JSON.stringify(body)).digest("hex")}`.
The verification request itself is unsigned. Notion publishes no vector and the Python SDK
(notion-client 3.1.0) has no webhook verifier, so this script computes one with hmac.
"""
import hashlib
import hmac

TOKEN = "secret_tMrlL1qK5vuQAh1b6cZGhFChZTSYJlce98V0pYn7yBl"
BODY = '{"id":"367cba44-b6f3-4c92-81e7-6a2e9659efd4","timestamp":"2024-12-05T23:55:34.285Z","workspace_id":"13950b26-c203-4f3b-b97d-93ec06319565","type":"page.content_updated","entity":{"id":"153104cd-477e-809d-8dc4-ff2d96ae3090","type":"page"}}'
print(f'const NOTION_TOKEN: &str = "{TOKEN}";')
print(f'const NOTION_BODY: &[u8] = br#"{BODY}"#;')
print(f'const NOTION_SIG: &str = "sha256={hmac.new(TOKEN.encode(), BODY.encode(), hashlib.sha256).hexdigest()}";')
