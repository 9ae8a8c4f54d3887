"""Discord interaction vectors for src/providers/discord.rs.

Generated with PyNaCl 1.6.2 (pip install pynacl), the library Discord's own documentation uses
in its Python example (https://discord.com/developers/docs/interactions/overview#setting-up-an-endpoint-validating-security-request-headers):
X-Signature-Ed25519 = hex Ed25519 signature, with the application's key, of
X-Signature-Timestamp + raw body; verified with the public key (hex) the Developer Portal shows.
The key pair comes from a fixed seed so the vectors are stable.
"""
from nacl.signing import SigningKey

SEED = bytes(range(32))
key = SigningKey(SEED)
TIMESTAMP = "1736900000"
BODY = b'{"application_id":"1196823712383795210","id":"1329051734958002216","type":2,"token":"aW50ZXJhY3Rpb246MTMyOTA1","guild_id":"1131924542395437128","data":{"id":"1196824421124796426","name":"deploy","type":1}}'
PING = b'{"application_id":"1196823712383795210","id":"1329051734958002217","type":1,"token":"aW50ZXJhY3Rpb246MTMyOTA2","version":1}'

print("PUBLIC_KEY:", key.verify_key.encode().hex())
# libsodium's secret key: seed followed by the public key (what `send --secret` takes)
print("SECRET_KEY:", (SEED + key.verify_key.encode()).hex())
print("TIMESTAMP:", TIMESTAMP)
print("BODY:", BODY.decode())
print("SIGNATURE:", key.sign(TIMESTAMP.encode() + BODY).signature.hex())
print("PING:", PING.decode())
print("PING_SIGNATURE:", key.sign(TIMESTAMP.encode() + PING).signature.hex())
