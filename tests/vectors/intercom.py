"""Intercom webhook vectors.

Intercom's "Signed notifications" (developers.intercom.com, webhook model): `X-Hub-Signature:
sha1=<hex HMAC-SHA1(client_secret, body)>`, "the hexadecimal (40-byte) representation of a SHA-1
signature computed using the HMAC algorithm as defined in RFC2104". The documented example request
does not give its secret, so this script computes a vector with Python's hmac (RFC 2104).
"""
import hashlib
import hmac

SECRET = "intercom-client-secret-0f1e2d3c"
BODY = '{"type":"notification_event","app_id":"a86dr8yl","id":"notif_78c122d0-23ba-11e4-9464-79b01267cc2e","topic":"user.created","data":{"type":"notification_event_data","item":{"type":"user","id":"530370b477ad7120001d"}}}'
print(f'const INTERCOM_SECRET: &str = "{SECRET}";')
print(f'const INTERCOM_BODY: &[u8] = br#"{BODY}"#;')
print(f'const INTERCOM_SIG: &str = "sha1={hmac.new(SECRET.encode(), BODY.encode(), hashlib.sha1).hexdigest()}";')
