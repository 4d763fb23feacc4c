//! [`EndpointSecurity`]: everything an endpoint's config asks to be done to a
//! request before it leaves, behind the sender's [`Prepare`] seam.
//!
//! Order matters: the auth header first, then the body token (it changes the
//! body), then the signature (Standard Webhooks or "hmac") over the final body.

use std::time::Duration;

use super::auth::{AuthError, Authenticator};
use super::prepare::{Attempt, BoxFuture, Prepare, PrepareError};
use super::signing::{Signer, SignerError};
use super::token::{insert_token, make_token};
use crate::config::EndpointConfig;

/// Why an endpoint's security settings cannot be used (config validation
/// reports these first, at load). Never holds a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecurityError {
    /// A bad `auth` section.
    #[error("endpoints.{endpoint}.{source}")]
    Auth {
        /// The endpoint's name.
        endpoint: String,
        /// What is wrong.
        source: AuthError,
    },
    /// A bad `signing` section.
    #[error("endpoints.{endpoint}.signing.{source}")]
    Signing {
        /// The endpoint's name.
        endpoint: String,
        /// What is wrong.
        source: SignerError,
    },
}

/// Auth, body token and signing for one endpoint; shared by every strategy
/// sending there (one OAuth2 token cache per endpoint).
#[derive(Debug)]
pub struct EndpointSecurity {
    endpoint: String,
    auth: Authenticator,
    signer: Option<Signer>,
    include_token: bool,
}

impl EndpointSecurity {
    /// Builds the security of endpoint `name` from its config. `http` sends
    /// OAuth2 token requests (build it with [`super::tls::configure`] if the
    /// token endpoint needs the same TLS settings).
    pub fn new(
        name: &str,
        config: &EndpointConfig,
        http: reqwest::Client,
    ) -> Result<EndpointSecurity, SecurityError> {
        let timeout: Duration = config.timeout;
        let auth = Authenticator::new(name, &config.auth, http, timeout).map_err(|source| {
            SecurityError::Auth {
                endpoint: name.to_string(),
                source,
            }
        })?;
        let signer = match &config.signing {
            Some(signing) => {
                Some(
                    Signer::from_config(signing).map_err(|source| SecurityError::Signing {
                        endpoint: name.to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let include_token = config.signing.as_ref().is_some_and(|s| s.include_token);
        Ok(EndpointSecurity {
            endpoint: name.to_string(),
            auth,
            signer,
            include_token,
        })
    }

    async fn prepare_attempt(&self, attempt: &mut Attempt) -> Result<(), PrepareError> {
        self.auth.apply(&mut attempt.headers).await.map_err(|err| {
            tracing::debug!(endpoint = %self.endpoint, strategy = %attempt.strategy, error = %err, "cannot authenticate");
            PrepareError(err.to_string())
        })?;
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        if self.include_token {
            let token = make_token(
                signer.primary(),
                &attempt.strategy,
                &attempt.batch_id,
                attempt.timestamp,
            );
            attempt.body =
                insert_token(&attempt.body, &token).map_err(|err| PrepareError(err.to_string()))?;
        }
        let headers = signer
            .headers(&attempt.batch_id, attempt.timestamp, &attempt.body)
            .map_err(|err| PrepareError(err.to_string()))?;
        for (name, value) in headers {
            attempt.headers.insert(name, value);
        }
        Ok(())
    }
}

impl Prepare for EndpointSecurity {
    fn prepare<'a>(&'a self, attempt: &'a mut Attempt) -> BoxFuture<'a, Result<(), PrepareError>> {
        Box::pin(self.prepare_attempt(attempt))
    }

    fn unauthorized(&self) -> bool {
        self.auth.unauthorized()
    }
}
