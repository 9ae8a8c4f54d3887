"""Paddle Billing webhook signature vectors, from Paddle's Python SDK
(pip install paddle-python-sdk==1.16.1): paddle_billing.Notifications.PaddleSignature computes
and verifies `Paddle-Signature: ts=…;h1=…`. Run with `python3 -P tests/vectors/paddle.py`.
Prints the constants of src/providers/paddle.rs."""
from paddle_billing.Notifications.PaddleSignature import PaddleSignature
from paddle_billing.Notifications.Secret import Secret

SECRET = "pdl_ntfset_01gkpjp8bkm3tm53kdgkx6sms7_6h3qd3uFSi9YCD3OLYAShQI90XTI5vEI"
OTHER = "pdl_ntfset_01hv8wptq8987qeep44cyrewp9_rotatedSecretForTheRotationTest"
TS = 1733580000
BODY = '{"event_id":"evt_01hv8x2acma2gz7he6kn5ps0zy","event_type":"transaction.completed","occurred_at":"2024-12-07T14:00:00.000000Z","notification_id":"ntf_01hv8x2af7kd6kbf2qhmzt1pvr","data":{"id":"txn_01hv8wptq8987qeep44cyrewp9","customer_id":"ctm_01hv8wt8nffez4p2t6typn4a5j"}}'

h1 = PaddleSignature.calculate_hmac(SECRET, f"{TS}:{BODY}".encode()).hexdigest()
h1_other = PaddleSignature.calculate_hmac(OTHER, f"{TS}:{BODY}".encode()).hexdigest()
header = f"ts={TS};h1={h1}"
both = f"ts={TS};h1={h1_other};h1={h1}"
assert PaddleSignature().verify(header, BODY, Secret(SECRET))
assert PaddleSignature().verify(both, BODY, Secret(SECRET))
assert PaddleSignature().verify(header, BODY, [Secret(OTHER), Secret(SECRET)])
print(f'const SECRET: &str = "{SECRET}";')
print(f'const OTHER: &str = "{OTHER}";')
print(f"const TS: i64 = {TS};")
print(f"const BODY: &[u8] = br#\"{BODY}\"#;")
print(f'const HEADER: &str = "{header}";')
print(f'const BOTH: &str = "{both}";')
