//! Building the configured endpoints: per endpoint one HTTP client with its
//! TLS settings, the client for OAuth2 token requests (same TLS settings),
//! and the security (auth, signing) every request passes through. Used by
//! `walhook run` and `walhook run-strategy` alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::security::{EndpointSecurity, SecurityError};
use super::sender::Endpoint;
use super::tls::{self, SystemRoots, TlsError};
use super::DeliveryError;
use crate::config::{Config, EndpointConfig};

/// Why an endpoint cannot be built from its configuration (exit 2: the
/// configuration must change). Messages name the endpoint, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A `[tls]` file cannot be read or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The client for token requests cannot be built.
    #[error("endpoints.{endpoint}: cannot build the HTTP client for token requests: {source}")]
    TokenClient {
        /// The endpoint's name.
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    /// A bad `auth` or `signing` section.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// A bad URL, or the endpoint's client cannot be built.
    #[error(transparent)]
    Endpoint(#[from] DeliveryError),
}

/// One [`Endpoint`] per endpoint a strategy uses, by name. The clients
/// share one read of the system's CA roots. Blocks while it reads them.
pub(crate) fn build_endpoints(
    config: &Config,
) -> Result<BTreeMap<String, Arc<Endpoint>>, EndpointError> {
    let roots = SystemRoots::default();
    let mut endpoints = BTreeMap::new();
    for (name, cfg) in &config.endpoints {
        if config.strategies.iter().any(|s| &s.endpoint == name) {
            endpoints.insert(name.clone(), Arc::new(build_endpoint(name, cfg, &roots)?));
        }
    }
    Ok(endpoints)
}

/// Endpoint `name`: its security over a token client, its own client.
fn build_endpoint(
    name: &str,
    cfg: &EndpointConfig,
    roots: &SystemRoots,
) -> Result<Endpoint, EndpointError> {
    let token_client = tls::configure_shared(
        reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            .redirect(reqwest::redirect::Policy::none()),
        &cfg.tls,
        name,
        roots,
    )?
    .build()
    .map_err(|source| EndpointError::TokenClient {
        endpoint: name.to_string(),
        source,
    })?;
    let security = EndpointSecurity::new(name, cfg, token_client)?;
    Ok(Endpoint::with_tls(name, cfg, Arc::new(security), |b| {
        tls::configure_shared(b, &cfg.tls, name, roots)
    })?)
}
