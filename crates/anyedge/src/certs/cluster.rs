//! `anyedge certs cluster-ca --out DIR` and `anyedge certs node --ca DIR --id NODE --out DIR`:
//! the cluster CA and node certificates for mutual TLS between nodes. Private keys are written
//! with mode 0600; existing files are never overwritten. What the certificates contain:
//! `anyedge_tls::cluster_ca`.

use crate::cli::CertsCommand;
use anyedge_tls::cluster_ca::{self, PemPair};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn run(command: &CertsCommand) -> ExitCode {
    let result = match command {
        CertsCommand::ClusterCa { out } => cluster_ca_files(out),
        CertsCommand::Node { ca, id, out } => node_files(ca, id, out),
        CertsCommand::SecretKey { out } => secret_key_file(out),
        CertsCommand::List(_) => Err("not a cluster certificate command".to_string()),
    };
    match result {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn cluster_ca_files(out: &Path) -> Result<Vec<PathBuf>, String> {
    let ca = cluster_ca::new_ca().map_err(|e| e.to_string())?;
    write_pair(out, "cluster-ca", &ca)
}

fn secret_key_file(out: &Path) -> Result<Vec<PathBuf>, String> {
    let hex = anyedge_tls::acme::SecretKey::generate_hex().map_err(|e| e.to_string())?;
    write_new(out, &hex, 0o600)?;
    Ok(vec![out.to_path_buf()])
}

fn node_files(ca_dir: &Path, id: &str, out: &Path) -> Result<Vec<PathBuf>, String> {
    anyedge_config::rules::name("node id", id)?;
    let read = |name: &str| {
        let path = ca_dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let ca = PemPair {
        cert: read("cluster-ca.pem")?,
        key: read("cluster-ca-key.pem")?,
    };
    let node = cluster_ca::issue_node(&ca, id).map_err(|e| format!("{}: {e}", ca_dir.display()))?;
    write_pair(out, id, &node)
}

/// `DIR/STEM.pem` (0644) and `DIR/STEM-key.pem` (0600), neither existing before.
fn write_pair(dir: &Path, stem: &str, pair: &PemPair) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    for path in [&cert, &key] {
        if path.exists() {
            return Err(format!("{} exists; not overwriting it", path.display()));
        }
    }
    write_new(&key, &pair.key, 0o600)?;
    write_new(&cert, &pair.cert, 0o644)?;
    Ok(vec![cert, key])
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}
