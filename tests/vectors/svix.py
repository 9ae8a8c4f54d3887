"""Svix webhook signature vectors, from the svix Python SDK (pip install svix==2.9.1):
svix.webhooks.Webhook.sign signs, Webhook.verify checks (with svix-* headers).
Run with `python3 -P tests/vectors/svix.py`. Prints the constants of src/providers/svix.rs."""
from datetime import datetime, timezone

from svix.webhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_2mJ6hYbU7Kq1xVZ0bWlNcEyRtAo"
TS = 1733580000
BODY = '{"data":{"id":"user_29w83sxmDNGwOuEthce5gg56FcC","object":"user"},"object":"event","type":"user.created"}'

wh = Webhook(SECRET)
sig = wh.sign(MSG_ID, datetime.fromtimestamp(TS, tz=timezone.utc), BODY)
headers = {"svix-id": MSG_ID, "svix-timestamp": str(TS), "svix-signature": sig}
# verify checks the timestamp against the clock; the SDK's tolerance is 5 minutes.
import svix.webhooks as m
try:
    wh.verify(BODY, headers)
    print("# verified against the current clock (unexpected for an old timestamp)")
except Exception as e:
    print(f"# SDK refuses the old timestamp as expected: {e}")
print(f'const SECRET: &str = "{SECRET}";')
print(f'const MSG_ID: &str = "{MSG_ID}";')
print(f"const TS: i64 = {TS};")
print(f"const BODY: &[u8] = br#\"{BODY}\"#;")
print(f'const SIGNATURE: &str = "{sig}";')
