"""Zoom webhook vectors for src/providers/zoom.rs.

Zoom publishes no verification SDK on a package registry for Python; this follows the documented
algorithm (https://developers.zoom.us/docs/api/webhooks/#verify-webhook-events and
#validate-your-webhook-endpoint), as zoom/webhook-sample implements it:
x-zm-signature = "v0=" + hex HMAC-SHA256(secret token, "v0:{x-zm-request-timestamp}:{raw body}"),
and the endpoint.url_validation answer {"plainToken": p, "encryptedToken": hex HMAC-SHA256(secret
token, p)}. Python 3 standard library only.
"""
import hashlib
import hmac

SECRET = b"nMZ1v3cRp0kRzYxBdL7q0A"
TIMESTAMP = "1626230691"
BODY = b'{"event":"meeting.started","event_ts":1626230691572,"payload":{"account_id":"AAAAAABBBB","object":{"id":"1234567890","uuid":"4444AAAiAAAAAiAiAiiAii=="}}}'
PLAIN_TOKEN = b"qgg8vlvZRS6UYooatFL8Aw"

sig = hmac.new(SECRET, b"v0:" + TIMESTAMP.encode() + b":" + BODY, hashlib.sha256).hexdigest()
enc = hmac.new(SECRET, PLAIN_TOKEN, hashlib.sha256).hexdigest()
print("SECRET:", SECRET.decode())
print("TIMESTAMP:", TIMESTAMP)
print("BODY:", BODY.decode())
print("SIGNATURE: v0=" + sig)
print("PLAIN_TOKEN:", PLAIN_TOKEN.decode())
print("ENCRYPTED_TOKEN:", enc)
