//! Typeform: `Typeform-Signature: sha256=<base64 HMAC-SHA256(secret, body)>`, the secret set on
//! the form's webhook (Connect > Webhooks > Edit, or `secret` through the Webhooks API); the
//! body's `event_type` (`form_response`, `form_response_partial`) as the event type, its
//! `event_id` as the delivery id. No timestamp is signed: no replay window.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;

use super::signature::{VerifyError, decode_b64_mac, mac_of};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Typeform;

const EVENT_TYPE: Field = Field::new(0);
const EVENT_ID: Field = Field::new(1);
const SIGNATURE: &str = "typeform-signature";

impl Provider for Typeform {
    fn name(&self) -> &'static str {
        "typeform"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "typeform",
            secret_env: &["TYPEFORM_WEBHOOK_SECRET"],
            identifier: Some("payload.form_response.form_id"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn probes(&self) -> &'static [Probe] {
        &[(&["event_type"], EVENT_TYPE), (&["event_id"], EVENT_ID)]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let t = fields
            .str(EVENT_TYPE)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                BodyError("a Typeform webhook needs a string \"event_type\" field".into())
            })?;
        Ok(Classified {
            event_type: t.to_string(),
            action: None,
            delivery_id: fields.str(EVENT_ID).map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Some(event) = opts.event {
            out.set_json_str(&["event_type"], event)?;
        }
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/typeform-form_response.json")
    }
}

/// `Typeform-Signature: sha256=<base64 HMAC-SHA256(secret, body)>` (padding optional).
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let mac = signature
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"sha256="))
        .and_then(decode_b64_mac)
        .ok_or(VerifyError::InvalidSignature)?;
    secrets.verify_body(body, &mac)
}

/// `sha256=<base64>`, the value of `Typeform-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut out = String::from("sha256=");
    STANDARD.encode_string(mac_of(&key, &[body]), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/typeform.py (base64 HMAC-SHA256, as Typeform's docs compute it).
    const TYPEFORM_SECRET: &str = "typeform-secret-abc123";
    const TYPEFORM_BODY: &[u8] = br#"{"event_id":"01HB2ZJ8Q5V3K6M9N2P4R7T0W1","event_type":"form_response","form_response":{"form_id":"lT4Z3j","token":"a3a12ec67a1365927098a606107fac15"}}"#;
    const TYPEFORM_SIG: &str = "sha256=i45EeS/ddEQERP3coFf2kbpkAEtTNYIImQgH2BveKWY=";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    #[test]
    fn typeform_vector() {
        assert_eq!(
            sign(TYPEFORM_SECRET.as_bytes(), TYPEFORM_BODY),
            TYPEFORM_SIG
        );
        let s = set(TYPEFORM_SECRET);
        assert_eq!(
            verify(&s, Some(TYPEFORM_SIG.as_bytes()), TYPEFORM_BODY),
            Ok(())
        );
        let unpadded = TYPEFORM_SIG.trim_end_matches('=');
        assert_eq!(verify(&s, Some(unpadded.as_bytes()), TYPEFORM_BODY), Ok(()));
        assert_eq!(Typeform.replay_window(), None);
    }

    #[test]
    fn typeform_refuses_changed_wrong_missing_malformed_and_rotates() {
        let s = set(TYPEFORM_SECRET);
        let sig = Some(TYPEFORM_SIG.as_bytes());
        let mut body = TYPEFORM_BODY.to_vec();
        body.pop();
        assert_eq!(verify(&s, sig, &body), INVALID);
        assert_eq!(verify(&set("guess"), sig, TYPEFORM_BODY), INVALID);
        assert_eq!(verify(&s, None, TYPEFORM_BODY), INVALID);
        for bad in [
            b"".as_slice(),
            &TYPEFORM_SIG.as_bytes()[7..],
            b"sha1=i45EeS/ddEQERP3coFf2kbpkAEtTNYIImQgH2BveKWY=",
            b"sha256=i45EeS/ddEQERP3coFf2kbpkAEtTNYIImQgH2BveKWY=AAAA",
            b"sha256=!!!!",
            // The MAC as hex, which Typeform never sends.
            b"sha256=8b8e44792fdd74440444fddca057f691ba64004b53358208990807d81bde2966",
        ] {
            assert_eq!(verify(&s, Some(bad), TYPEFORM_BODY), INVALID, "{bad:?}");
        }
        let both = set(&format!("{TYPEFORM_SECRET},newer"));
        assert_eq!(verify(&both, sig, TYPEFORM_BODY), Ok(()));
        let newer = sign(b"newer", TYPEFORM_BODY);
        assert_eq!(verify(&both, Some(newer.as_bytes()), TYPEFORM_BODY), Ok(()));
    }

    #[test]
    fn classify_reads_event_type_and_id() {
        let spec = ProbeSpec::new(Typeform.probes(), None);
        let fields = crate::event::probe_json_object(Typeform.sample().as_bytes(), &spec)
            .unwrap()
            .fields;
        let c = Typeform.classify(&HeaderMap::new(), &fields).unwrap();
        assert_eq!(c.event_type, "form_response");
        assert_eq!(c.delivery_id.as_deref(), Some("01HB2ZJ8Q5V3K6M9N2P4R7T0W1"));
        let partial = spec.read_value(&json!({"event_type": "form_response_partial"}));
        let c = Typeform.classify(&HeaderMap::new(), &partial).unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.delivery_id),
            ("form_response_partial", None)
        );
        assert!(
            Typeform
                .classify(&HeaderMap::new(), &Fields::default())
                .is_err()
        );
    }
}
