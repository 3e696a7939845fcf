//! Loading, or on first start generating, the key that encrypts stored env values.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ServiceError;
use crate::config::Config;
use crate::store::EnvCipher;

/// Name of the systemd credential that contains the key (`LoadCredential=agentrun-key:…`).
pub const CREDENTIAL_NAME: &str = "agentrun-key";

/// Returns the cipher for env values, from the first of: `secrets.key_file`, the systemd
/// credential [`CREDENTIAL_NAME`], or `<data_dir>/secrets.key`, which is generated with mode
/// 0600 when missing.
pub(crate) fn load_key(config: &Config) -> Result<EnvCipher, ServiceError> {
    if let Some(path) = &config.secrets.key_file {
        let cipher = read_key(path)?;
        tracing::info!(key_file = %path.display(), "secrets key read from secrets.key_file");
        return Ok(cipher);
    }
    if let Some(directory) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = PathBuf::from(directory).join(CREDENTIAL_NAME);
        if path.exists() {
            let cipher = read_key(&path)?;
            tracing::info!(
                credential = CREDENTIAL_NAME,
                "secrets key read from the systemd credential"
            );
            return Ok(cipher);
        }
    }

    let path = config.generated_key_path();
    if path.exists() {
        tracing::warn!(
            key_file = %path.display(),
            "the secrets key is stored in the data folder, so a copy of that folder holds both the \
             encrypted env values and their key; move it into a systemd credential \
             (LoadCredentialEncrypted=agentrun-key) or set secrets.key_file"
        );
        return read_key(&path);
    }
    generate_key(&path)?;
    tracing::warn!(
        key_file = %path.display(),
        "generated a new secrets key in the data folder; to keep it apart from the data, run \
         `systemd-creds encrypt --name=agentrun-key {} /etc/credstore.encrypted/agentrun-key`, \
         add LoadCredentialEncrypted=agentrun-key to the unit, then delete the key file",
        path.display()
    );
    read_key(&path)
}

fn read_key(path: &Path) -> Result<EnvCipher, ServiceError> {
    let material = std::fs::read(path).map_err(|source| ServiceError::KeyFile {
        operation: "reading the secrets key",
        path: path.to_owned(),
        source,
    })?;
    if let Ok(metadata) = std::fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                key_file = %path.display(),
                mode = format!("{:o}", metadata.permissions().mode() & 0o777),
                "the secrets key file is readable by other users; chmod 600 it"
            );
        }
    }
    EnvCipher::from_key_material(&material).map_err(|source| ServiceError::InvalidKey {
        path: path.to_owned(),
        source,
    })
}

fn generate_key(path: &Path) -> Result<(), ServiceError> {
    let key_error = |source| ServiceError::KeyFile {
        operation: "creating the secrets key",
        path: path.to_owned(),
        source,
    };
    // `create_new` fails instead of overwriting a key that appeared in the meantime.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(key_error)?;
    file.write_all(EnvCipher::generate_key_hex().as_bytes())
        .map_err(key_error)?;
    file.sync_all().map_err(key_error)?;
    Ok(())
}
