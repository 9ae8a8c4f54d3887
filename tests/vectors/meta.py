"""Meta (WhatsApp, Messenger, Instagram) webhook signature vectors for src/providers/meta.rs.

Meta publishes no SDK helper for this; the scheme is its documented one
(https://developers.facebook.com/docs/graph-api/webhooks/getting-started#validate-payloads):
`X-Hub-Signature-256: sha256=` + the lowercase hex HMAC-SHA256 of the raw body under the app
secret, computed here with Python's hmac. It is GitHub's `X-Hub-Signature-256` scheme, so the
first vector is GitHub's documented one (secret "It's a Secret to Everybody", body
"Hello, World!"), a known answer for the same computation.
Run: python3 tests/vectors/meta.py
"""

import hashlib
import hmac


def sig(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


assert (
    sig("It's a Secret to Everybody", b"Hello, World!")
    == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
)
SECRET = "6f1c3e0d9a8b7c6d5e4f3a2b1c0d9e8f"
BODY = (
    '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":'
    '[{"value":{"messaging_product":"whatsapp","statuses":[{"id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3",'
    '"status":"delivered","timestamp":"1764169990","recipient_id":"16505551234"}]},"field":"messages"}]}]}'
)
print(f'const SECRET: &str = "{SECRET}";')
print(f"const BODY: &str = r#\"{BODY}\"#;")
print(f'const SIG: &str = "{sig(SECRET, BODY.encode())}";')
