//! The cluster secret key (`[catalog] secret_key_file`) and the sealing of private keys stored in
//! etcd with it: AES-256-GCM (ring), a random 96-bit nonce per value, and the etcd key the
//! value is stored under as associated data (a sealed value copied under another key does not
//! open).
//!
//! The file holds 32 bytes, either raw or as 64 hexadecimal digits (surrounding whitespace
//! ignored): `anyedge certs secret-key --out cluster.secret`, or
//! `head -c32 /dev/urandom | xxd -p -c64 > cluster.secret`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Why a secret key or a sealed value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the secret key file {path} holds neither 32 raw bytes nor 64 hexadecimal digits")]
    Format { path: String },
    #[error("no random numbers for a nonce")]
    Random,
    #[error(
        "the sealed value does not open with this secret key (another cluster's key, or altered)"
    )]
    Open,
    #[error("the sealed value is malformed: {0}")]
    Malformed(String),
}

/// A value sealed with the cluster secret key, as stored in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// `"AES-256-GCM"`.
    pub alg: String,
    /// Base64 (standard, padded).
    pub nonce: String,
    /// Base64: the ciphertext followed by the 16-byte tag.
    pub ciphertext: String,
}

const ALG: &str = "AES-256-GCM";

/// The cluster secret key.
pub struct SecretKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Read `path`: 32 raw bytes, or 64 hexadecimal digits.
    pub fn load(path: &Path) -> Result<SecretKey, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_file_bytes(&bytes).ok_or_else(|| SecretError::Format {
            path: path.display().to_string(),
        })
    }

    /// The key in a file's content, if it is 32 raw bytes or 64 hexadecimal digits.
    pub fn from_file_bytes(bytes: &[u8]) -> Option<SecretKey> {
        let raw: Vec<u8> = match std::str::from_utf8(bytes).map(str::trim) {
            Ok(text) if text.len() == 64 => decode_hex(text)?,
            _ if bytes.len() == 32 => bytes.to_vec(),
            _ => return None,
        };
        Self::from_bytes(&raw)
    }

    pub fn from_bytes(raw: &[u8]) -> Option<SecretKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, raw).ok()?;
        Some(SecretKey {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// A new random key, as 64 hexadecimal digits and a newline (the file format).
    pub fn generate_hex() -> Result<String, SecretError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| SecretError::Random)?;
        let mut text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        Ok(text)
    }

    /// Seal `plaintext`, bound to `context` (the etcd key it is stored under).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Sealed, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut data = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretError::Random)?;
        Ok(Sealed {
            alg: ALG.to_string(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(data),
        })
    }

    /// Open a value sealed under `context`.
    pub fn open(&self, context: &str, sealed: &Sealed) -> Result<Vec<u8>, SecretError> {
        if sealed.alg != ALG {
            return Err(SecretError::Malformed(format!(
                "unknown algorithm {:?}",
                sealed.alg
            )));
        }
        let malformed = |e: base64::DecodeError| SecretError::Malformed(e.to_string());
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&sealed.nonce)
            .map_err(malformed)?
            .try_into()
            .map_err(|_| SecretError::Malformed("the nonce is not 12 bytes".into()))?;
        let mut data = B64.decode(&sealed.ciphertext).map_err(malformed)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretError::Open)?;
        Ok(plain.to_vec())
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_context() {
        let hex = SecretKey::generate_hex().unwrap();
        assert_eq!(hex.len(), 65);
        let key = SecretKey::from_file_bytes(hex.as_bytes()).unwrap();
        let sealed = key.seal("/anyedge/certs/a.test", b"PRIVATE").unwrap();
        assert!(!sealed.ciphertext.contains("PRIVATE"));
        assert_eq!(
            key.open("/anyedge/certs/a.test", &sealed).unwrap(),
            b"PRIVATE"
        );
        // Another key, another context, an altered value: refused.
        let other = SecretKey::from_bytes(&[1u8; 32]).unwrap();
        assert!(matches!(
            other.open("/anyedge/certs/a.test", &sealed),
            Err(SecretError::Open)
        ));
        assert!(matches!(
            key.open("/anyedge/certs/b.test", &sealed),
            Err(SecretError::Open)
        ));
        let mut altered = sealed.clone();
        altered.ciphertext = B64.encode([0u8; 23]);
        assert!(key.open("/anyedge/certs/a.test", &altered).is_err());
        // A fresh nonce each time.
        assert_ne!(
            key.seal("c", b"x").unwrap().nonce,
            key.seal("c", b"x").unwrap().nonce
        );
    }

    #[test]
    fn the_file_holds_raw_bytes_or_hex_digits() {
        assert!(SecretKey::from_file_bytes(&[7u8; 32]).is_some());
        let hex = format!("{}\n", "ab".repeat(32));
        assert!(SecretKey::from_file_bytes(hex.as_bytes()).is_some());
        assert!(SecretKey::from_file_bytes(b"short").is_none());
        assert!(SecretKey::from_file_bytes("zz".repeat(32).as_bytes()).is_none());
        assert!(SecretKey::from_file_bytes(&[7u8; 31]).is_none());
    }
}
