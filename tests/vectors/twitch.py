"""Twitch EventSub vectors for src/providers/twitch.rs.

Twitch publishes no verification SDK on a package registry; this follows the documented
algorithm (https://dev.twitch.tv/docs/eventsub/handling-webhook-events/#verifying-the-event-message):
HMAC-SHA256(secret, message_id + message_timestamp + raw body), sent as
`Twitch-Eventsub-Message-Signature: sha256=<hex>`. Python 3 standard library only.
"""
import hashlib
import hmac

SECRET = b"s3cRe7-twitch-eventsub"
MESSAGE_ID = "e76c6bd4-55c9-4987-8304-da1588d8988b"
TIMESTAMP = "2019-11-16T10:11:12.634234626Z"
BODY = b'{"subscription":{"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","type":"channel.follow","version":"2"},"event":{"user_id":"1234"}}'

sig = hmac.new(SECRET, MESSAGE_ID.encode() + TIMESTAMP.encode() + BODY, hashlib.sha256).hexdigest()
print("SECRET:", SECRET.decode())
print("MESSAGE_ID:", MESSAGE_ID)
print("TIMESTAMP:", TIMESTAMP)
print("BODY:", BODY.decode())
print("SIGNATURE: sha256=" + sig)
