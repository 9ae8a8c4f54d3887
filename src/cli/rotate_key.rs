//! `event-router rotate-key`: re-encrypts everything sealed at rest under a new key, with the
//! server stopped. Safe to run again after an interruption: values already under the new key
//! are recognized and left alone, and the key check value moves to the new key only at the end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;

use crate::config::{Config, Overrides};
use crate::crypto::{self, Cipher, PREFIX};
use crate::store::encrypted::KEY_CHECK_ID;
use crate::store::{PutMode, RuleKind, Store, StoredRule};

/// What a rotation did.
#[derive(Debug, Default)]
pub struct Rotated {
    pub bodies: u64,
    pub agents: u64,
    /// The key file rewritten with the new key (when the key came from the data dir).
    pub key_file: Option<PathBuf>,
}

/// The command: exits 0 once everything is under the new key, 2 for a bad configuration, else 1.
pub fn main(new_key: &str, overrides: Overrides) -> ExitCode {
    let cfg = match super::load_config(&overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match super::current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(rotate_key(&cfg, new_key)) {
        Ok(r) => {
            eprintln!(
                "event-router: re-encrypted {} archived bodies and {} agent secrets",
                r.bodies, r.agents
            );
            match r.key_file {
                Some(f) => eprintln!("event-router: the new key is in {}", f.display()),
                None => eprintln!(
                    "event-router: set ENCRYPTION_KEY to the new key before starting the server"
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("event-router: rotate-key: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Re-encrypts the store of `config` from its current key to `new_key` (base64, 32 bytes).
pub async fn rotate_key(config: &Config, new_key: &str) -> Result<Rotated, String> {
    let key_file = config.data_dir.join("encryption.key");
    let old_key = match &config.encryption_key {
        Some(k) => crypto::parse_key(&k.0).map_err(|e| format!("ENCRYPTION_KEY: {e}"))?,
        None if key_file.exists() => crypto::load_or_generate_key(None, &config.data_dir)?,
        None => {
            return Err(format!(
                "no current key: neither ENCRYPTION_KEY nor {} exists",
                key_file.display()
            ));
        }
    };
    let new_key = crypto::parse_key(new_key).map_err(|e| format!("--new-key: {e}"))?;
    if old_key == new_key {
        return Err("the new key is the current key".into());
    }
    let old = Arc::new(Cipher::new(&old_key));
    let new = Arc::new(Cipher::new(&new_key));
    let store = crate::store::open_backend(&config.store_settings())
        .await
        .map_err(|e| format!("{e:#}"))?;
    let result = rotate_store(store.as_ref(), &old, &new, config.encrypt_payloads).await;
    store.close().await;
    let mut rotated = result?;
    if config.encryption_key.is_none() {
        crate::crypto::write_private(
            &key_file,
            &format!(
                "{}\n",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, new_key)
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
        rotated.key_file = Some(key_file);
    }
    Ok(rotated)
}

async fn rotate_store(
    store: &dyn Store,
    old: &Arc<Cipher>,
    new: &Arc<Cipher>,
    payloads: bool,
) -> Result<Rotated, String> {
    let db = |e: crate::store::StoreError| e.to_string();
    let check = store
        .list_rules(RuleKind::Meta)
        .await
        .map_err(db)?
        .into_iter()
        .find(|r| r.id == KEY_CHECK_ID);
    match &check {
        Some(c) if new.matches_check(&c.body) => return Ok(Rotated::default()),
        Some(c) if !old.matches_check(&c.body) => {
            return Err(
                "the current key does not match the one this data was encrypted with \
                        (check ENCRYPTION_KEY, or DATA_DIR/encryption.key)"
                    .into(),
            );
        }
        _ => {}
    }
    let (o, n) = (old.clone(), new.clone());
    let rewrite: crate::store::BodyRewrite = Arc::new(move |body: &str| {
        reseal(&o, &n, body, payloads).map_err(|e| format!("archived body: {e}"))
    });
    let bodies = store.rewrite_bodies(rewrite).await.map_err(db)?;
    let mut agents = 0;
    for rule in store.list_rules(RuleKind::Agent).await.map_err(db)? {
        let mut v: Value = serde_json::from_str(&rule.body)
            .map_err(|e| format!("agent {}: stored JSON: {e}", rule.id))?;
        let Some(Value::String(secret)) = v.get_mut("secret") else {
            continue;
        };
        if let Some(sealed) =
            reseal(old, new, secret, true).map_err(|e| format!("agent {}: secret: {e}", rule.id))?
        {
            *secret = sealed;
            let body = v.to_string();
            store
                .put_rule(
                    RuleKind::Agent,
                    StoredRule { id: rule.id, body },
                    PutMode::Upsert,
                )
                .await
                .map_err(db)?;
            agents += 1;
        }
    }
    // Last: from here on only the new key opens the store.
    let check = new.key_check().map_err(|e| e.to_string())?;
    store
        .put_rule(
            RuleKind::Meta,
            StoredRule {
                id: KEY_CHECK_ID.into(),
                body: check,
            },
            PutMode::Upsert,
        )
        .await
        .map_err(db)?;
    Ok(Rotated {
        bodies,
        agents,
        key_file: None,
    })
}

/// A value under the new key: sealed ones are opened with the old key (or left alone when the
/// new key already opens them); plain ones are sealed when `seal_plain`.
fn reseal(
    old: &Cipher,
    new: &Cipher,
    value: &str,
    seal_plain: bool,
) -> Result<Option<String>, crypto::CryptoError> {
    let plain = if value.starts_with(PREFIX) {
        match old.open(value) {
            Ok(p) => p,
            Err(e) => {
                return match new.open(value) {
                    Ok(_) => Ok(None),
                    Err(_) => Err(e),
                };
            }
        }
    } else if seal_plain {
        value.as_bytes().to_vec()
    } else {
        return Ok(None);
    };
    new.seal(&plain).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reseal_moves_values_to_the_new_key_once() {
        let old = Cipher::new(&[1; 32]);
        let new = Cipher::new(&[2; 32]);
        let sealed = old.seal(b"body").unwrap();
        let moved = reseal(&old, &new, &sealed, false).unwrap().unwrap();
        assert_eq!(new.open(&moved).unwrap(), b"body");
        // Already under the new key: unchanged (a resumed rotation).
        assert!(reseal(&old, &new, &moved, false).unwrap().is_none());
        // Plain values: sealed only when asked.
        assert!(reseal(&old, &new, "{}", false).unwrap().is_none());
        let s = reseal(&old, &new, "{}", true).unwrap().unwrap();
        assert_eq!(new.open(&s).unwrap(), b"{}");
        // Under neither key: an error, not silence.
        let stranger = Cipher::new(&[3; 32]).seal(b"x").unwrap();
        assert!(reseal(&old, &new, &stranger, false).is_err());
    }
}
