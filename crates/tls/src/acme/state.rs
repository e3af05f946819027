//! The state directory of a single node: the ACME account, and per hostname the issued chain,
//! its private key and the issuance status. Every file is written atomically (a temporary file
//! in the same directory, synced, then renamed over the old one); private keys and the account
//! are created with mode 0600.
//!
//! Layout:
//! ```text
//! STATE_DIR/account.json              the account's credentials (contains its private key)
//! STATE_DIR/certs/HOST/cert.pem       the issued chain, leaf first
//! STATE_DIR/certs/HOST/key.pem        its private key (PKCS#8)
//! STATE_DIR/certs/HOST/status.json    pending | valid | failing, last error, times
//! ```

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of private keys and account credentials.
const PRIVATE_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;

/// Where issuance stands for one hostname, as `anyedge certs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    /// An order is in progress (or about to start).
    Pending { since: i64 },
    /// A certificate is held, valid until `not_after` (unix seconds).
    Valid {
        not_after: i64,
        issuer: String,
        serial: String,
    },
    /// The last order failed; the next attempt is at `next_attempt`. A certificate that is
    /// still valid may be serving meanwhile (`not_after`).
    Failing {
        error: String,
        failures: u32,
        next_attempt: i64,
        not_after: Option<i64>,
    },
}

/// A chain and key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCert {
    pub chain_pem: String,
    pub key_pem: String,
}

/// One node's ACME state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn account_path(&self) -> PathBuf {
        self.root.join("account.json")
    }

    /// `certs/HOST`. Config validation admits only DNS names; a name that could leave the
    /// directory (`/`, a leading `.`) is refused all the same.
    fn host_dir(&self, hostname: &str) -> io::Result<PathBuf> {
        if hostname.is_empty() || hostname.starts_with('.') || hostname.contains(['/', '\\', '\0'])
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a hostname: {hostname:?}"),
            ));
        }
        Ok(self.root.join("certs").join(hostname))
    }

    /// The stored account credentials (JSON), if any.
    pub fn read_account(&self) -> io::Result<Option<String>> {
        read_optional(&self.account_path())
    }

    pub fn write_account(&self, json: &str) -> io::Result<()> {
        write_atomic(&self.account_path(), json.as_bytes(), PRIVATE_MODE)
    }

    /// The stored certificate of `hostname`, if both files are there.
    pub fn read_cert(&self, hostname: &str) -> io::Result<Option<StoredCert>> {
        let dir = self.host_dir(hostname)?;
        let chain = read_optional(&dir.join("cert.pem"))?;
        let key = read_optional(&dir.join("key.pem"))?;
        Ok(match (chain, key) {
            (Some(chain_pem), Some(key_pem)) => Some(StoredCert { chain_pem, key_pem }),
            _ => None,
        })
    }

    /// Store a chain and its key: the key first, so that a chain on disk always has its key.
    pub fn write_cert(&self, hostname: &str, cert: &StoredCert) -> io::Result<()> {
        let dir = self.host_dir(hostname)?;
        write_atomic(&dir.join("key.pem"), cert.key_pem.as_bytes(), PRIVATE_MODE)?;
        write_atomic(
            &dir.join("cert.pem"),
            cert.chain_pem.as_bytes(),
            PUBLIC_MODE,
        )
    }

    pub fn read_status(&self, hostname: &str) -> io::Result<Option<Status>> {
        let Some(text) = read_optional(&self.host_dir(hostname)?.join("status.json"))? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    pub fn write_status(&self, hostname: &str, status: &Status) -> io::Result<()> {
        let json = serde_json::to_string_pretty(status)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let path = self.host_dir(hostname)?.join("status.json");
        write_atomic(&path, json.as_bytes(), PUBLIC_MODE)
    }

    /// The hostnames with a directory under `certs/`, sorted.
    pub fn hostnames(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = match fs::read_dir(self.root.join("certs")) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Write `bytes` to `path` so that a reader sees the old content or the new, never a part:
/// a temporary file beside it, created with `mode`, synced, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() applies only to a new file, and the umask narrows it.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn certificates_account_and_status_round_trip_with_private_files_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        assert_eq!(dir.read_account().unwrap(), None);
        assert_eq!(dir.read_cert("app.test").unwrap(), None);
        assert!(dir.hostnames().unwrap().is_empty());

        dir.write_account("{\"id\":\"x\"}").unwrap();
        let cert = StoredCert {
            chain_pem: "CHAIN".into(),
            key_pem: "KEY".into(),
        };
        dir.write_cert("app.test", &cert).unwrap();
        let status = Status::Failing {
            error: "boom".into(),
            failures: 2,
            next_attempt: 7,
            not_after: Some(9),
        };
        dir.write_status("app.test", &status).unwrap();

        assert_eq!(
            dir.read_account().unwrap().as_deref(),
            Some("{\"id\":\"x\"}")
        );
        assert_eq!(dir.read_cert("app.test").unwrap(), Some(cert));
        assert_eq!(dir.read_status("app.test").unwrap(), Some(status));
        assert_eq!(dir.hostnames().unwrap(), vec!["app.test".to_string()]);

        let root = tmp.path().join("state");
        assert_eq!(mode(&root.join("account.json")), 0o600);
        assert_eq!(mode(&root.join("certs/app.test/key.pem")), 0o600);
        assert_eq!(mode(&root.join("certs/app.test/cert.pem")), 0o644);
        // No temporary file is left behind.
        let left: Vec<_> = fs::read_dir(root.join("certs/app.test"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
    }

    #[test]
    fn names_that_would_leave_the_directory_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        for bad in ["../x", "a/b", ".hidden", ""] {
            assert!(dir.read_cert(bad).is_err(), "{bad}");
            assert!(dir
                .write_status(bad, &Status::Pending { since: 0 })
                .is_err());
        }
    }

    #[test]
    fn a_rewrite_replaces_the_content_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        write_atomic(&path, b"first, longer", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "second");
        assert_eq!(mode(&path), 0o600);
    }
}
