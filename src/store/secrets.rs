//! Encryption of integration env values at rest.
//!
//! Each integration's env is one sealed blob: a format byte, a random 24-byte nonce and the
//! XChaCha20-Poly1305 ciphertext of the JSON list of `[name, value]` pairs. The agentID is the
//! associated data, so a blob copied onto another integration's row fails to open instead of
//! handing that integration someone else's credentials. The random nonce is safe with this
//! cipher because 24 random bytes make a repeat negligible for any number of writes to a store.

use std::fmt;

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use uuid::Uuid;

/// Length of a secrets key in bytes.
pub const KEY_BYTES: usize = 32;
/// First byte of every sealed blob; a later format would use another value.
const FORMAT_V1: u8 = 1;
const NONCE_BYTES: usize = 24;
/// Plain text sealed into the store once, so that a wrong key is detected at start-up.
const KEY_CHECK_TEXT: &[u8] = b"agentrun secrets key check";

/// Why a secrets key or a sealed blob was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// The key does not have the required length.
    #[error(
        "invalid secrets key: expected {KEY_BYTES} raw bytes or {} hex digits, found {found_bytes} bytes",
        KEY_BYTES * 2
    )]
    InvalidKey {
        /// Length of what was read, in bytes.
        found_bytes: usize,
    },

    /// A blob did not open with this key, or is damaged.
    #[error("the env of {agent_id} cannot be decrypted: the secrets key differs from the one it was written with, or the record is damaged")]
    Decrypt {
        /// The integration whose env failed to open.
        agent_id: String,
    },
}

/// The cipher for env values, holding the key. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct EnvCipher {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for EnvCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvCipher { .. }")
    }
}

impl EnvCipher {
    /// Creates a cipher from a key file's content: exactly 32 bytes, or 64 hex digits with
    /// optional surrounding whitespace.
    ///
    /// # Errors
    ///
    /// [`SecretsError::InvalidKey`] for any other content.
    pub fn from_key_material(material: &[u8]) -> Result<Self, SecretsError> {
        if material.len() == KEY_BYTES {
            return Self::from_key(material);
        }
        let trimmed = material.trim_ascii();
        if trimmed.len() == KEY_BYTES * 2 {
            if let Ok(key) = hex::decode(trimmed) {
                return Self::from_key(&key);
            }
        }
        Err(SecretsError::InvalidKey {
            found_bytes: material.len(),
        })
    }

    fn from_key(key: &[u8]) -> Result<Self, SecretsError> {
        let cipher =
            XChaCha20Poly1305::new_from_slice(key).map_err(|_| SecretsError::InvalidKey {
                found_bytes: key.len(),
            })?;
        Ok(Self { cipher })
    }

    /// Returns a new random key as 64 hex digits and a newline, the format the service writes
    /// when it generates a key file.
    pub fn generate_key_hex() -> String {
        let key = chacha20poly1305::Key::generate();
        format!("{}\n", hex::encode(key.as_slice()))
    }

    /// Seals `env` for the integration `agent_id`.
    pub fn seal_env(&self, agent_id: &Uuid, env: &[(String, String)]) -> Vec<u8> {
        // A list of string pairs always serialises.
        let plain = serde_json::to_vec(env).unwrap_or_default();
        self.seal(agent_id.to_string().as_bytes(), &plain)
    }

    /// Opens a blob that [`EnvCipher::seal_env`] made for `agent_id`.
    ///
    /// # Errors
    ///
    /// [`SecretsError::Decrypt`] when the key differs, the blob belongs to another
    /// integration or is damaged.
    pub fn open_env(
        &self,
        agent_id: &Uuid,
        blob: &[u8],
    ) -> Result<Vec<(String, String)>, SecretsError> {
        let failed = || SecretsError::Decrypt {
            agent_id: agent_id.to_string(),
        };
        let plain = self
            .open(agent_id.to_string().as_bytes(), blob)
            .ok_or_else(failed)?;
        serde_json::from_slice(&plain).map_err(|_| failed())
    }

    /// Returns a blob that [`EnvCipher::check_key`] accepts only with this key.
    pub fn key_check(&self) -> Vec<u8> {
        self.seal(b"key-check", KEY_CHECK_TEXT)
    }

    /// Returns true when `blob` came from [`EnvCipher::key_check`] with the same key.
    pub fn check_key(&self, blob: &[u8]) -> bool {
        self.open(b"key-check", blob).as_deref() == Some(KEY_CHECK_TEXT)
    }

    fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = XNonce::generate();
        // Encryption fails only for messages longer than the cipher's 256 GiB limit, which an
        // env list bounded by the request size limits never reaches.
        let ciphertext = self
            .cipher
            .encrypt(&nonce, Payload { msg: plain, aad })
            .unwrap_or_default();
        let mut blob = Vec::with_capacity(1 + NONCE_BYTES + ciphertext.len());
        blob.push(FORMAT_V1);
        blob.extend_from_slice(nonce.as_slice());
        blob.extend_from_slice(&ciphertext);
        blob
    }

    fn open(&self, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
        let (&format, rest) = blob.split_first()?;
        if format != FORMAT_V1 || rest.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
        let nonce = XNonce::try_from(nonce).ok()?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> EnvCipher {
        EnvCipher::from_key_material(EnvCipher::generate_key_hex().as_bytes()).expect("valid key")
    }

    fn env() -> Vec<(String, String)> {
        vec![
            ("url".to_owned(), "https://hooks.example/secret".to_owned()),
            ("TOKEN".to_owned(), "a=b \"c\"\nd é".to_owned()),
        ]
    }

    #[test]
    fn env_round_trips() {
        let cipher = cipher();
        let agent = Uuid::from_u128(7);
        let blob = cipher.seal_env(&agent, &env());
        assert_eq!(cipher.open_env(&agent, &blob).expect("opens"), env());
    }

    #[test]
    fn sealed_env_hides_values() {
        let blob = cipher().seal_env(&Uuid::from_u128(7), &env());
        let text = String::from_utf8_lossy(&blob);
        assert!(!text.contains("hooks.example"), "{text}");
    }

    #[test]
    fn env_of_other_integration_fails() {
        let cipher = cipher();
        let blob = cipher.seal_env(&Uuid::from_u128(7), &env());
        let error = cipher
            .open_env(&Uuid::from_u128(8), &blob)
            .expect_err("wrong agent");
        assert!(matches!(error, SecretsError::Decrypt { .. }), "{error}");
    }

    #[test]
    fn env_with_other_key_fails() {
        let blob = cipher().seal_env(&Uuid::from_u128(7), &env());
        assert!(cipher().open_env(&Uuid::from_u128(7), &blob).is_err());
    }

    #[test]
    fn damaged_blob_fails() {
        let cipher = cipher();
        let mut blob = cipher.seal_env(&Uuid::from_u128(7), &env());
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert!(cipher.open_env(&Uuid::from_u128(7), &blob).is_err());
        assert!(cipher.open_env(&Uuid::from_u128(7), &[]).is_err());
        assert!(cipher
            .open_env(&Uuid::from_u128(7), &[FORMAT_V1, 1, 2])
            .is_err());
    }

    #[test]
    fn key_check_detects_other_key() {
        let first = cipher();
        let check = first.key_check();
        assert!(first.check_key(&check));
        assert!(!cipher().check_key(&check));
    }

    #[test]
    fn key_material_formats() {
        assert!(EnvCipher::from_key_material(&[7u8; 32]).is_ok());
        let hex_key = format!("  {}\n", "ab".repeat(32));
        assert!(EnvCipher::from_key_material(hex_key.as_bytes()).is_ok());

        let error = EnvCipher::from_key_material(b"short").expect_err("short key");
        assert!(
            matches!(error, SecretsError::InvalidKey { found_bytes: 5 }),
            "{error}"
        );
        let not_hex = "zz".repeat(32);
        assert!(EnvCipher::from_key_material(not_hex.as_bytes()).is_err());
    }
}
