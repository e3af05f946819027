//! Where a node's ACME task keeps its state: `[acme] state_dir` on a single node; etcd (private
//! keys sealed with `[catalog] secret_key_file`) on the etcd store, where the node also follows
//! the challenges and certificates other nodes publish (docs/acme.md).

use anyedge_config::{CatalogConfig, Config};
use anyedge_store::{EtcdCertStorage, Keys};
use anyedge_tls::acme::{Challenges, SecretKey, StateDir, Storage};
use std::sync::Arc;

/// The storage for `config`, or `None` when ACME is off. An error is a setting that cannot be
/// used (the secret key file).
pub fn storage(config: &Config, challenges: &Arc<Challenges>) -> Result<Option<Storage>, String> {
    match &config.catalog {
        CatalogConfig::Etcd(cfg) if config.acme.enabled => {
            let Some(path) = &cfg.secret_key_file else {
                return Err("[acme] with store = \"etcd\" needs [catalog] secret_key_file: private keys are never stored in clear".into());
            };
            let secret = SecretKey::load(path).map_err(|e| e.to_string())?;
            let store = Arc::new(EtcdCertStorage::new(
                cfg.clone(),
                &Keys::default(),
                secret,
                &config.node.id,
            ));
            let (_task, changed) = store.follow(challenges.clone());
            Ok(Some(Storage {
                store,
                changed: Some(changed),
            }))
        }
        CatalogConfig::Etcd(_) => Ok(None),
        CatalogConfig::File => Ok(config.acme.state_dir.as_ref().map(|dir| Storage {
            store: Arc::new(StateDir::new(dir)),
            changed: None,
        })),
    }
}
