"""Asana webhook vectors for src/providers/asana.rs.

Asana's SDKs on the registries do not verify webhooks; this follows the documented algorithm
(https://developers.asana.com/docs/webhooks-guide#security and
https://developers.asana.com/reference/createwebhook): the handshake carries `X-Hook-Secret`
(echoed back in the answer); each event request carries X-Hook-Signature = hex
HMAC-SHA256(that secret, raw body). The secret below is the one in Asana's createwebhook example.
Python 3 standard library only.
"""
import hashlib
import hmac

SECRET = b"b537207f20cbfa02357cf448134da559e8bd39d61597dcd5631b8012eae53e81"
BODY = b'{"events":[{"user":{"gid":"1201234567890123","resource_type":"user"},"created_at":"2024-05-14T13:57:04.239Z","action":"changed","resource":{"gid":"1207654321098765","resource_type":"task"},"parent":null,"change":{"field":"completed","action":"changed"}}]}'

print("SECRET:", SECRET.decode())
print("BODY:", BODY.decode())
print("SIGNATURE:", hmac.new(SECRET, BODY, hashlib.sha256).hexdigest())
print("HEARTBEAT_SIGNATURE:", hmac.new(SECRET, b'{"events":[]}', hashlib.sha256).hexdigest())
