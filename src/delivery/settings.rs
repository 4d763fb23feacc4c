//! What a reload may change under a running worker: its endpoint (client,
//! timeouts, auth, signing), its retry policy and its templates (headers,
//! query). A worker reads them at every attempt, so a reload reaches the
//! batches already failing at their next attempt (and ends their backoff
//! wait at once), also in a worker that a reload replaced and that is
//! still draining. The body of a batch is never re-made: its bytes and ids
//! stay what they were.

use std::sync::Arc;

use tokio::sync::watch;

use super::handles::PauseHandle;
use super::sender::Endpoint;
use crate::batch::Decorate;
use crate::config::Retry;

/// One version of a worker's settings.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) retry: Retry,
    pub(crate) decorate: Arc<dyn Decorate>,
    /// Counts the changes (a batch re-evaluates its headers when it moved).
    pub(crate) generation: u64,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("retry", &self.retry)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The switch a reload changes a worker's settings with.
#[derive(Debug, Clone)]
pub(crate) struct SettingsHandle(Arc<watch::Sender<Settings>>);

impl SettingsHandle {
    pub(crate) fn new(endpoint: Arc<Endpoint>, retry: Retry, decorate: Arc<dyn Decorate>) -> Self {
        SettingsHandle(Arc::new(
            watch::channel(Settings {
                endpoint,
                retry,
                decorate,
                generation: 0,
            })
            .0,
        ))
    }

    /// New settings from the next attempt on; `pause` is the worker's (a
    /// 410 from the new endpoint pauses it too).
    pub(crate) fn update(
        &self,
        endpoint: Arc<Endpoint>,
        retry: Retry,
        decorate: Arc<dyn Decorate>,
        pause: &PauseHandle,
    ) {
        endpoint.register(pause);
        self.0.send_modify(|s| {
            s.endpoint = endpoint;
            s.retry = retry;
            s.decorate = decorate;
            s.generation += 1;
        });
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Settings> {
        self.0.subscribe()
    }

    /// The settings now.
    pub(crate) fn current(&self) -> Settings {
        self.0.borrow().clone()
    }
}
