"""Run with `python3 -P tests/vectors/stripe.py` (-P: this file must not shadow the SDK).
Stripe webhook signature vectors, from the stripe Python SDK (pip install stripe==16.1.0):
stripe.WebhookSignature.generate_signature_header signs, verify_header checks.
Prints the constants used by src/providers/stripe.rs."""
import stripe

SECRET = "whsec_test_5f1d9c2b7a6e4f0c8b3a1d2e"
OTHER = "whsec_rotated_0a9b8c7d6e5f4a3b2c1d"
TS = 1733580000
BODY = '{"id":"evt_1QTc2vFJ5ZhVBcWZ0ab1cDeF","object":"event","type":"customer.created"}'

header = stripe.WebhookSignature.generate_signature_header(BODY, SECRET, timestamp=TS)
assert stripe.WebhookSignature.verify_header(BODY, header, SECRET, tolerance=None)
other = stripe.WebhookSignature.generate_signature_header(BODY, OTHER, timestamp=TS)
# Several v1 entries (as during a secret roll on Stripe's side): any may match.
both = f"t={TS},v1={other.split('v1=')[1]},v1={header.split('v1=')[1]},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
assert stripe.WebhookSignature.verify_header(BODY, both, SECRET, tolerance=None)
print(f'const SECRET: &str = "{SECRET}";')
print(f'const OTHER: &str = "{OTHER}";')
print(f"const TS: i64 = {TS};")
print(f"const BODY: &[u8] = br#\"{BODY}\"#;")
print(f'const HEADER: &str = "{header}";')
print(f'const OTHER_HEADER: &str = "{other}";')
print(f'const BOTH: &str = "{both}";')
