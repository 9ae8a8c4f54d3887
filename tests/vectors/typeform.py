"""Typeform webhook vectors.

Typeform's "Secure your webhooks" (typeform.com/developers/webhooks/secure-your-webhooks/):
`Typeform-Signature: sha256=<base64 HMAC-SHA256(secret, raw body)>`; its example is
'sha256=' + crypto.createHmac('sha256', secret).update(payload).digest('base64'). Typeform publishes
no vector and no verification SDK, so this script computes one with hmac and base64.
"""
import base64
import hashlib
import hmac

SECRET = "typeform-secret-abc123"
BODY = '{"event_id":"01HB2ZJ8Q5V3K6M9N2P4R7T0W1","event_type":"form_response","form_response":{"form_id":"lT4Z3j","token":"a3a12ec67a1365927098a606107fac15"}}'
sig = "sha256=" + base64.b64encode(hmac.new(SECRET.encode(), BODY.encode(), hashlib.sha256).digest()).decode()
print(f'const TYPEFORM_SECRET: &str = "{SECRET}";')
print(f'const TYPEFORM_BODY: &[u8] = br#"{BODY}"#;')
print(f'const TYPEFORM_SIG: &str = "{sig}";')
