"""Bitbucket Cloud and Jira Cloud webhook vectors (both Atlassian, same scheme).

Both send `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>` (WebSub's method=signature).
Atlassian's Jira Cloud documentation, "Secure admin webhooks"
(https://developer.atlassian.com/cloud/jira/platform/webhooks/#secure-admin-webhooks), gives the
worked example secret "It's a Secret to Everybody", payload "Hello World!" and
sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9; Bitbucket Cloud's "Manage
webhooks" page documents the same header and algorithm without a vector. This script recomputes it.
"""
import hashlib
import hmac

SECRET = "It's a Secret to Everybody"
BODY = b"Hello World!"
sig = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
assert sig == "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9", sig
print(f'const ATLASSIAN_SECRET: &str = "{SECRET}";')
print(f'const ATLASSIAN_BODY: &[u8] = b"{BODY.decode()}";')
print(f'const ATLASSIAN_SIG: &str = "{sig}";')
