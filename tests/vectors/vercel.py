"""Vercel webhook vectors.

Vercel's "Securing webhooks" (vercel.com/docs/webhooks/webhooks-api#securing-webhooks): the
`x-vercel-signature` header is the hex HMAC-SHA1 of the raw body under the webhook's secret (an
integration's client secret for integration webhooks); its example is
crypto.createHmac('sha1', secret).update(rawBody).digest('hex'). No vector is published and the
Python SDK (vercel 0.12.1) has no webhook verifier, so this script computes one with hmac.
"""
import hashlib
import hmac

SECRET = "vercel-webhook-secret-9a8b7c6d"
BODY = '{"id":"uev_2XqF5example","type":"deployment.created","createdAt":1698345600000,"payload":{"team":{"id":"team_Vexample"},"deployment":{"id":"dpl_FjHqKqFexample"}}}'
print(f'const VERCEL_SECRET: &str = "{SECRET}";')
print(f'const VERCEL_BODY: &[u8] = br#"{BODY}"#;')
print(f'const VERCEL_SIG: &str = "{hmac.new(SECRET.encode(), BODY.encode(), hashlib.sha1).hexdigest()}";')
