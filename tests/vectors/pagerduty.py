"""PagerDuty v3 webhook signature vectors, computed as PagerDuty documents
(https://developer.pagerduty.com/docs/webhooks-overview#verifying-signatures: `v1=` + hex
HMAC-SHA256 of the raw body keyed with the subscription's secret; several comma-separated `v1=`
entries during a secret rotation). PagerDuty publishes no verification SDK on PyPI.
Run with `python3 tests/vectors/pagerduty.py`."""
import hashlib
import hmac

SECRET = "Wj8cGvmXzJ8kDpUq3c0mMUvRgBtOr9rBuqOCm8g1Hy4Yh9gXbVkeyv5f0Tcx6Wbq"
OTHER = "oldSecretBeingRotatedOut"
BODY = b'{"event":{"id":"01DEN0KTVA9F8JYV9J1R7Y3XQK","event_type":"incident.triggered","resource_type":"incident"}}'

def sig(secret):
    return "v1=" + hmac.new(secret.encode(), BODY, hashlib.sha256).hexdigest()

print(f'const SECRET: &str = "{SECRET}";')
print(f'const OTHER: &str = "{OTHER}";')
print(f"const BODY: &[u8] = br#\"{BODY.decode()}\"#;")
print(f'const SIGNATURE: &str = "{sig(SECRET)}";')
print(f'const BOTH: &str = "{sig(OTHER)},{sig(SECRET)}";')
