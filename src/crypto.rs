//! Encryption at rest (API.md section 11): AES-256-GCM under `ENCRYPTION_KEY` or a key generated
//! into the data dir. A sealed value is text, `enc:v1:<base64(nonce || ciphertext || tag)>`, so it
//! fits the columns and JSON fields that held the plaintext.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of a sealed value.
pub const PREFIX: &str = "enc:v1:";
/// The plaintext sealed as the store's key check value.
const CHECK_PLAINTEXT: &[u8] = b"event-router encryption key check v1";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the value is not encrypted data this server wrote")]
    Malformed,
    #[error("decryption failed: wrong key, or the data was altered")]
    Decrypt,
    #[error("the system random source failed")]
    Random,
}

/// Decodes a 32-byte key given in base64 (standard or URL-safe, padded or not).
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(t).ok())
        .ok_or("not base64 (expected 32 random bytes in base64, e.g. `openssl rand -base64 32`)")?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "decodes to {} bytes; AES-256 needs exactly 32 (`openssl rand -base64 32`)",
            bytes.len()
        )
    })
}

/// AES-256-GCM with a random 96-bit nonce per value.
pub struct Cipher {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(***)")
    }
}

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Cipher {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is valid for AES-256");
        Cipher {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// Seals `plain` into `enc:v1:…` text.
    pub fn seal(&self, plain: &[u8]) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CryptoError::Random)?;
        let mut buf = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut buf[NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Random)?;
        buf.extend_from_slice(tag.as_ref());
        let mut out = String::with_capacity(PREFIX.len() + buf.len().div_ceil(3) * 4);
        out.push_str(PREFIX);
        STANDARD_NO_PAD.encode_string(&buf, &mut out);
        Ok(out)
    }

    /// Opens `enc:v1:…` text; a value without the prefix is returned as it is (written before
    /// encryption was turned on).
    pub fn open(&self, text: &str) -> Result<Vec<u8>, CryptoError> {
        let Some(b64) = text.strip_prefix(PREFIX) else {
            return Ok(text.as_bytes().to_vec());
        };
        let mut buf = STANDARD_NO_PAD
            .decode(b64)
            .map_err(|_| CryptoError::Malformed)?;
        if buf.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Malformed);
        }
        let nonce = Nonce::try_assume_unique_for_key(&buf[..NONCE_LEN])
            .map_err(|_| CryptoError::Malformed)?;
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf[NONCE_LEN..])
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.drain(..NONCE_LEN);
        buf.truncate(plain_len);
        Ok(buf)
    }

    /// Opens a sealed value that must be UTF-8 text.
    pub fn open_text(&self, text: &str) -> Result<String, CryptoError> {
        if !text.starts_with(PREFIX) {
            return Ok(text.to_string());
        }
        String::from_utf8(self.open(text)?).map_err(|_| CryptoError::Malformed)
    }

    /// The value kept in the store to recognize this key at the next start.
    pub fn key_check(&self) -> Result<String, CryptoError> {
        self.seal(CHECK_PLAINTEXT)
    }

    /// Whether a stored key check value was sealed under this key.
    pub fn matches_check(&self, stored: &str) -> bool {
        stored.starts_with(PREFIX)
            && self
                .open(stored)
                .is_ok_and(|p| p.as_slice() == CHECK_PLAINTEXT)
    }
}

/// The key: `ENCRYPTION_KEY` when given, else the one in `DATA_DIR/encryption.key`, generated
/// (mode 0600) on first start.
pub fn load_or_generate_key(configured: Option<&str>, data_dir: &Path) -> Result<[u8; 32], String> {
    if let Some(k) = configured {
        return parse_key(k).map_err(|e| format!("ENCRYPTION_KEY: {e}"));
    }
    let path = data_dir.join("encryption.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => return parse_key(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| "the system random source failed".to_string())?;
    write_private(&path, &format!("{}\n", STANDARD.encode(key)))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(key)
}

/// Byte strings compared in constant time (keys, signatures): how long it takes says nothing
/// about where they differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// SHA-256 (hex) of an API key: keys are stored and indexed only as hashes.
pub fn hash_api_key(key: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, key))
}

/// `bytes` random bytes from the system source, as URL-safe base64 (session tokens, generated keys).
pub fn random_token(bytes: usize) -> String {
    use base64::Engine as _;
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .expect("the system random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Writes a file readable only by its owner.
/// Creates `dir` (and its parents) readable by the owner only (0700). A directory that already
/// exists keeps its mode; if others may read or enter it, a warning says so (the data dir holds
/// payloads, keys and secrets).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if dir.is_dir() {
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "the data dir is open to other users; it holds payloads, keys and secrets: chmod 700 it"
            );
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates an empty file readable and writable by the owner only (0600), unless it exists.
pub fn touch_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip() {
        let c = Cipher::new(&[7u8; 32]);
        let sealed = c.seal(b"whsec_secret").unwrap();
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("whsec"));
        assert_eq!(c.open(&sealed).unwrap(), b"whsec_secret");
        // Nonces differ, so equal plaintexts do not show.
        assert_ne!(sealed, c.seal(b"whsec_secret").unwrap());
        // Plain values pass through.
        assert_eq!(c.open_text("{\"a\":1}").unwrap(), "{\"a\":1}");
    }

    #[test]
    fn wrong_key_and_tampering_are_refused() {
        let c = Cipher::new(&[7u8; 32]);
        let other = Cipher::new(&[8u8; 32]);
        let sealed = c.seal(b"payload").unwrap();
        assert!(matches!(other.open(&sealed), Err(CryptoError::Decrypt)));
        let check = c.key_check().unwrap();
        assert!(c.matches_check(&check));
        assert!(!other.matches_check(&check));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(c.open(&tampered).is_err());
        assert!(matches!(c.open("enc:v1:!!"), Err(CryptoError::Malformed)));
    }

    #[test]
    fn keys_parse_in_any_base64_form() {
        let b = [1u8; 32];
        for e in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            assert_eq!(parse_key(&e.encode(b)).unwrap(), b);
        }
        assert!(
            parse_key(&STANDARD.encode([1u8; 16]))
                .unwrap_err()
                .contains("16 bytes")
        );
        assert!(parse_key("not base64 at all!").is_err());
    }

    #[test]
    fn generated_key_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let k1 = load_or_generate_key(None, dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("encryption.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_generate_key(None, dir.path()).unwrap(), k1);
    }
}
