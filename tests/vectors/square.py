"""Square webhook signature vectors for src/providers/square.rs.

Square's Python SDK, squareup 46.0.0.20260916 (`pip install squareup`),
`square.utils.webhooks_helper.verify_signature`: `x-square-hmacsha256-signature` is the base64
HMAC-SHA256, under the subscription's signature key, of the notification URL followed by the
body (https://developer.squareup.com/docs/webhooks/step3validate). The SDK only verifies, so
the signature is computed as it computes it and then checked with the SDK.
Run: python3 tests/vectors/square.py
"""

import base64
import hashlib
import hmac
import sys

# This file is itself named square.py: look the package up without its own directory.
sys.path = [p for p in sys.path if not p.endswith("tests/vectors")]
from square.utils.webhooks_helper import verify_signature  # noqa: E402

KEY = "Ks2sEf3mHmTeq1ZuThJ2-w"
URL = "https://hooks.example.com/webhook/square"
BODY = (
    '{"merchant_id":"6SSW7HV8K2ST5","type":"payment.updated",'
    '"event_id":"13b867cf-db3d-4b1c-90b6-2f32a9d78124","created_at":"2026-11-26T15:13:20Z",'
    '"data":{"type":"payment","id":"KkAkhdMsgzn59SM8A89WgKwekxLZY",'
    '"object":{"payment":{"id":"KkAkhdMsgzn59SM8A89WgKwekxLZY","status":"COMPLETED"}}}}'
)

sig = base64.b64encode(
    hmac.new(KEY.encode(), (URL + BODY).encode(), hashlib.sha256).digest()
).decode()
assert verify_signature(
    request_body=BODY, signature_header=sig, signature_key=KEY, notification_url=URL
)
assert not verify_signature(
    request_body=BODY + " ", signature_header=sig, signature_key=KEY, notification_url=URL
)
assert not verify_signature(
    request_body=BODY, signature_header=sig, signature_key=KEY, notification_url=URL + "/"
)
print(f'const KEY: &str = "{KEY}";')
print(f'const URL: &str = "{URL}";')
print(f"const BODY: &str = r#\"{BODY}\"#;")
print(f'const SIG: &str = "{sig}";')
