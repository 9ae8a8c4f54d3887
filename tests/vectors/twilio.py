"""Twilio webhook signature vectors for src/providers/twilio.rs.

Twilio's Python SDK, twilio 9.13.0 (`pip install twilio`), `twilio.request_validator.RequestValidator`:
`X-Twilio-Signature` is the base64 HMAC-SHA1, under the auth token, of the full URL Twilio
called followed by the form parameters sorted by name, each name then value; for a JSON body the
URL carries `bodySHA256` (hex SHA-256 of the body) and only the URL is signed
(https://www.twilio.com/docs/usage/webhooks/webhooks-security). The first vector is the worked
example of that page (auth token 12345). A Webhook Setting with a SharedKey (public beta) may
sign with HMAC-SHA256 instead (X-Twilio-Webhooks-Signature-Settings: ...,algorithm=HMAC_SHA256).
Run: python3 tests/vectors/twilio.py
"""

import hashlib
import sys

# This file is itself named twilio.py: look the package up without its own directory.
sys.path = [p for p in sys.path if not p.endswith("tests/vectors")]
from twilio.request_validator import RequestValidator  # noqa: E402

DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
v = RequestValidator(DOC_TOKEN)
doc_sig = v.compute_signature(DOC_URL, DOC_PARAMS)
assert v.validate(DOC_URL, DOC_PARAMS, doc_sig)
# Twilio may or may not have included the default port: both are accepted.
assert v.validate("https://mycompany.com:443/myapp.php?foo=1&bar=2", DOC_PARAMS, doc_sig)

TOKEN = "9a3f0c1e5b7d2468ace0bdf13579ace0"
URL = "https://hooks.example.com/webhook/twilio"
JSON_BODY = '{"AccountSid":"AC00000000000000000000000000000000","MessageSid":"SM11111111111111111111111111111111","MessageStatus":"delivered"}'
body_hash = hashlib.sha256(JSON_BODY.encode()).hexdigest()
json_url = URL + "?bodySHA256=" + body_hash
v2 = RequestValidator(TOKEN)
json_sig = v2.compute_signature(json_url, {})
assert v2.validate(json_url, JSON_BODY, json_sig)
assert not v2.validate(json_url, JSON_BODY + " ", json_sig)
sha256_sig = v2.compute_signature(URL, DOC_PARAMS, "HMAC_SHA256")
assert v2.validate(URL, DOC_PARAMS, sha256_sig, "HMAC_SHA256")

print(f'const DOC_TOKEN: &str = "{DOC_TOKEN}";')
print(f'const DOC_URL: &str = "{DOC_URL}";')
print(f'const DOC_SIG: &str = "{doc_sig}";')
print(f'const TOKEN: &str = "{TOKEN}";')
print(f'const URL: &str = "{URL}";')
print(f"const JSON_BODY: &str = r#\"{JSON_BODY}\"#;")
print(f'const JSON_URL: &str = "{json_url}";')
print(f'const JSON_SIG: &str = "{json_sig}";')
print(f'const SHA256_SIG: &str = "{sha256_sig}";')
