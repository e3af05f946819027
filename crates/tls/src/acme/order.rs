//! One ACME order for one hostname, with instant-acme: create (or restore) the account, order,
//! answer TLS-ALPN-01 through [`Challenges`], finalize, download the chain.

use super::challenge::{challenge_cert_parts, ChallengeCertError, Challenges};
use super::state::StoredCert;
use super::storage::{CertStorage, IssuerLock};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use std::path::PathBuf;
use std::time::Duration;

/// How long the CA may take to validate and to issue, each.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);

/// Why an order (or the account it needs) failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{stage}: {source}")]
    Acme {
        stage: &'static str,
        source: instant_acme::Error,
    },
    #[error("the CA offered no tls-alpn-01 challenge for {hostname}")]
    NoTlsAlpnChallenge { hostname: String },
    #[error("authorization for {hostname} is {status:?}")]
    Authorization {
        hostname: String,
        status: AuthorizationStatus,
    },
    #[error("order became {status:?}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Order {
        status: OrderStatus,
        detail: Option<String>,
    },
    #[error(transparent)]
    ChallengeCert(#[from] ChallengeCertError),
    #[error("certificate storage: {0}")]
    State(#[from] std::io::Error),
    #[error("stored account is unreadable: {0}")]
    StoredAccount(serde_json::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl OrderError {
    /// The CA no longer knows the stored account (a test CA restarted, an account deleted):
    /// the next attempt should make a new one.
    pub fn account_is_gone(&self) -> bool {
        match self {
            OrderError::Acme {
                source: instant_acme::Error::Api(problem),
                ..
            } => {
                problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
            }
            _ => false,
        }
    }
}

fn acme(stage: &'static str) -> impl FnOnce(instant_acme::Error) -> OrderError {
    move |source| OrderError::Acme { stage, source }
}

/// Where the CA is and who we are to it.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    pub directory: String,
    pub contact: Vec<String>,
    /// Trust these roots (PEM) instead of the system's for the directory's HTTPS (a test CA).
    pub ca_roots: Option<PathBuf>,
}

/// The account stored in `state` for this directory (unless `fresh`), or a new one (then
/// stored: mode 0600 in a state directory, sealed in etcd).
pub async fn account(
    settings: &AccountSettings,
    state: &dyn CertStorage,
    fresh: bool,
) -> Result<Account, OrderError> {
    let builder = || match &settings.ca_roots {
        Some(pem) => Account::builder_with_root(pem).map_err(acme("trust roots")),
        None => Account::builder().map_err(acme("HTTP client")),
    };
    let stored = match state.read_account().await {
        Ok(stored) => stored,
        // Sealed with another secret key, or damaged: a new account is made and stored.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(error = %e, "the stored ACME account cannot be read: creating a new one");
            None
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(json) = stored.filter(|_| !fresh) {
        let stored: serde_json::Value =
            serde_json::from_str(&json).map_err(OrderError::StoredAccount)?;
        if stored.get("directory").and_then(|d| d.as_str()) == Some(settings.directory.as_str()) {
            let credentials = serde_json::from_value(stored).map_err(OrderError::StoredAccount)?;
            return builder()?
                .from_credentials(credentials)
                .await
                .map_err(acme("restoring the account"));
        }
        tracing::info!(directory = %settings.directory, "ACME directory changed: creating a new account");
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder()?
        .create(&new, settings.directory.clone(), None)
        .await
        .map_err(acme("creating the account"))?;
    let json = serde_json::to_string(&credentials).map_err(OrderError::StoredAccount)?;
    state.write_account(&json).await?;
    tracing::info!(id = account.id(), "ACME account created");
    Ok(account)
}

/// Removes the hostname's challenge when the order ends, however it ends.
struct PendingChallenge<'a> {
    challenges: &'a Challenges,
    hostname: &'a str,
}

impl Drop for PendingChallenge<'_> {
    fn drop(&mut self) {
        self.challenges.remove(self.hostname);
    }
}

/// Where an order puts its challenge: this edge's map, and the storage that tells the other
/// edges (under the issuer's lock).
pub struct ChallengeSink<'a> {
    pub local: &'a Challenges,
    pub storage: &'a dyn CertStorage,
    pub lock: &'a IssuerLock,
}

/// Order a certificate for `hostname`, answering its TLS-ALPN-01 challenge through
/// `sink` (every edge serves the challenges on its TLS ports). The published challenge is
/// withdrawn when the order ends, however it ends.
pub async fn issue(
    account: &Account,
    hostname: &str,
    sink: &ChallengeSink<'_>,
) -> Result<StoredCert, OrderError> {
    let result = issue_inner(account, hostname, sink).await;
    if let Err(e) = sink.storage.withdraw_challenge(hostname).await {
        tracing::warn!(hostname, error = %e, "cannot withdraw the published challenge (its lease ends it)");
    }
    result
}

async fn issue_inner(
    account: &Account,
    hostname: &str,
    sink: &ChallengeSink<'_>,
) -> Result<StoredCert, OrderError> {
    let challenges = sink.local;
    let identifiers = [Identifier::Dns(hostname.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(acme("new order"))?;
    let _pending = PendingChallenge {
        challenges,
        hostname,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(acme("authorization"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(OrderError::Authorization {
                    hostname: hostname.to_string(),
                    status,
                })
            }
        }
        let mut challenge = authz.challenge(ChallengeType::TlsAlpn01).ok_or_else(|| {
            OrderError::NoTlsAlpnChallenge {
                hostname: hostname.to_string(),
            }
        })?;
        let digest = challenge.key_authorization().digest();
        let (key, parts) = challenge_cert_parts(hostname, digest.as_ref())?;
        challenges.insert(hostname, key);
        sink.storage
            .publish_challenge(sink.lock, hostname, &parts)
            .await?;
        challenge
            .set_ready()
            .await
            .map_err(acme("challenge ready"))?;
    }
    let retries = RetryPolicy::new().timeout(POLL_TIMEOUT);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(acme("waiting for validation"))?;
    if status != OrderStatus::Ready {
        let detail = order_problem(&mut order).await;
        return Err(OrderError::Order { status, detail });
    }
    let key_pem = order.finalize().await.map_err(acme("finalize"))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(acme("certificate download"))?;
    Ok(StoredCert { chain_pem, key_pem })
}

/// The CA's reason for an invalid order: the order's error, else the first failed challenge's.
async fn order_problem(order: &mut instant_acme::Order) -> Option<String> {
    if let Some(problem) = &order.state().error {
        return Some(problem.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        if let Some(problem) = authz.challenges.iter().find_map(|c| c.error.as_ref()) {
            return Some(problem.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn api(problem_type: &str) -> OrderError {
        let json = format!("{{\"type\": \"{problem_type}\", \"detail\": \"x\", \"status\": 400}}");
        let problem: instant_acme::Problem = serde_json::from_str(&json).unwrap();
        OrderError::Acme {
            stage: "new order",
            source: instant_acme::Error::Api(problem),
        }
    }

    #[test]
    fn an_unknown_account_is_told_apart_from_other_problems() {
        assert!(api("urn:ietf:params:acme:error:accountDoesNotExist").account_is_gone());
        assert!(!api("urn:ietf:params:acme:error:rateLimited").account_is_gone());
        assert!(!OrderError::Timeout(POLL_TIMEOUT).account_is_gone());
        let text = api("urn:ietf:params:acme:error:rateLimited").to_string();
        assert!(text.starts_with("new order: API error: x"), "{text}");
    }
}

#[cfg(test)]
mod client_tests {
    /// The production HTTP client (system roots through the platform verifier) builds with
    /// ring as the only provider, without a process default installed first.
    #[test]
    fn the_default_http_client_builds_on_ring() {
        assert!(instant_acme::Account::builder().is_ok());
    }
}
