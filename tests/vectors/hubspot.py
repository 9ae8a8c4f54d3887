"""HubSpot signature v3 vectors for src/providers/hubspot.rs.

Made with HubSpot's own Python SDK, hubspot-api-client 12.0.0 (`pip install hubspot-api-client`),
`hubspot.utils.signature.Signature.get_signature(..., signature_version="v3")`, which signs
method + uri + body + timestamp with HMAC-SHA256 under the app's client secret, base64.
The URI is the one HubSpot called, with the characters its docs list decoded
(https://developers.hubspot.com/docs/apps/legacy-apps/authentication/validating-requests):
the SDK takes the URI as given, so the second vector passes the decoded one.
Run: python3 tests/vectors/hubspot.py
"""

import sys

# This file is itself named hubspot.py: look the package up without its own directory.
sys.path = [p for p in sys.path if not p.endswith("tests/vectors")]
from hubspot.utils.signature import Signature  # noqa: E402

SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
BODY = (
    '[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
    '"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,'
    '"changeSource":"CRM","changeFlag":"NEW","appId":54321}]'
)
TS = "1764170000123"

plain = Signature.get_signature(
    SECRET, BODY, "v3", http_uri="https://hooks.example.com/webhook/hubspot",
    http_method="POST", timestamp=TS,
)
# Received as /webhook/hubspot?state=a%3Ab%2Fc&x=%20 : %3A and %2F are decoded, %20 is not.
decoded = Signature.get_signature(
    SECRET, BODY, "v3", http_uri="https://hooks.example.com/webhook/hubspot?state=a:b/c&x=%20",
    http_method="POST", timestamp=TS,
)
print(f'const SECRET: &str = "{SECRET}";')
print(f"const BODY: &str = r#\"{BODY}\"#;")
print(f"const TS: &str = \"{TS}\";")
print(f'const SIG_PLAIN: &str = "{plain}";')
print(f'const SIG_DECODED: &str = "{decoded}";')
