"""SendGrid (Twilio SendGrid) signed Event Webhook vectors for src/providers/sendgrid.rs.

1. The published vector of sendgrid-python's own tests (test/unit/test_eventwebhook.py, sendgrid
   6.12.5 on PyPI), checked here with the SDK's EventWebhook.verify_signature.
2. A key pair of our own (cryptography 51.0.1) for `send`: the private key as base64 PKCS#8 DER
   (what `send --secret` takes), its public key as base64 SubjectPublicKeyInfo DER (what
   SendGrid shows and SENDGRID_WEBHOOK_SECRET holds), and a signature over timestamp + body,
   verified with the SDK.
Scheme (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features):
X-Twilio-Email-Event-Webhook-Signature = base64 ECDSA P-256 SHA-256 (ASN.1 DER) signature of
X-Twilio-Email-Event-Webhook-Timestamp + raw body.
"""
import base64
import json
import sys

# This file is named like the SDK: keep its own directory off the import path.
sys.path = [p for p in sys.path if not p.endswith("vectors")]

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid import EventWebhook

PUBLIC_KEY = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
SIGNATURE = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
TIMESTAMP = "1600112502"
PAYLOAD = json.dumps([{
    "email": "hello@world.com",
    "event": "dropped",
    "reason": "Bounced Address",
    "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
    "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
    "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
    "timestamp": 1600112492,
}], sort_keys=True, separators=(",", ":")) + "\r\n"

ew = EventWebhook()
assert ew.verify_signature(PAYLOAD, SIGNATURE, TIMESTAMP, ew.convert_public_key_to_ecdsa(PUBLIC_KEY))
print("SDK_PUBLIC_KEY:", PUBLIC_KEY)
print("SDK_SIGNATURE:", SIGNATURE)
print("SDK_TIMESTAMP:", TIMESTAMP)
print("SDK_PAYLOAD:", json.dumps(PAYLOAD))

# Our own pair, from a fixed scalar so the vectors are stable.
private = ec.derive_private_key(0x1F2E3D4C5B6A79880123456789ABCDEF0F1E2D3C4B5A69788796A5B4C3D2E1F0, ec.SECP256R1())
pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
spki = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
body = '[{"email":"ada@example.com","event":"delivered","sg_event_id":"ZGVsaXZlcmVkLTAtMjQ","timestamp":1700000000}]'
ts = "1700000005"
sig = base64.b64encode(private.sign((ts + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
assert ew.verify_signature(body, sig, ts, ew.convert_public_key_to_ecdsa(base64.b64encode(spki).decode()))
print("OWN_PRIVATE_KEY:", base64.b64encode(pkcs8).decode())
print("OWN_PUBLIC_KEY:", base64.b64encode(spki).decode())
print("OWN_TIMESTAMP:", ts)
print("OWN_BODY:", body)
print("OWN_SIGNATURE (ECDSA is randomised; any valid one will do):", sig)
