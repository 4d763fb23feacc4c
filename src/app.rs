//! Wires the stages together: source → sink, and the sink's acknowledgements
//! back to the source. Nothing here transforms data; each stage owns its job.

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::decode::SourceEvent;
use crate::source::{AckHandle, Source, SourceError, SourceOptions};

/// Events buffered between the source and the first consumer.
const SOURCE_CHANNEL: usize = 1024;
/// The stdout sink writes in chunks of about this size.
const STDOUT_CHUNK: usize = 64 * 1024;

/// Options of `walhook run` that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print committed records to stdout as JSON lines instead of delivering them.
    pub stdout: bool,
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("writing to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("walhook run without --stdout needs the delivery stage, which is not wired yet")]
    NotWired,
    #[error("a pipeline task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Source options from the configuration.
pub fn source_options(config: &Config) -> SourceOptions {
    SourceOptions::new(
        config.source.url.expose().to_string(),
        config.source.slot.clone(),
        vec![config.source.publication.clone()],
    )
}

/// Runs the pipeline until `shutdown` is cancelled or a fatal error.
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    if !opts.stdout {
        return Err(AppError::NotWired);
    }
    let (source, ack, _status) = Source::new(source_options(&config));
    let (tx, rx) = mpsc::channel(SOURCE_CHANNEL);
    let source_task = tokio::spawn(source.run(tx, shutdown.clone()));
    let sink = stdout_sink(rx, ack).await;
    if sink.is_err() {
        // The source cannot make progress without its consumer.
        shutdown.cancel();
    }
    let source_result = source_task.await?;
    sink?;
    source_result?;
    Ok(())
}

/// The debug sink: each committed record as one JSON line, acknowledged only
/// after the line has been written and flushed.
async fn stdout_sink(mut rx: mpsc::Receiver<SourceEvent>, ack: AckHandle) -> Result<(), AppError> {
    let mut out = tokio::io::stdout();
    let mut buf: Vec<u8> = Vec::with_capacity(STDOUT_CHUNK * 2);
    // The end LSN of the last transaction whose records are all in `buf` or written.
    let mut pending_ack = None;
    while let Some(event) = rx.recv().await {
        match event {
            SourceEvent::Record(record) => {
                record.write_json(&mut buf);
                buf.push(b'\n');
            }
            SourceEvent::Commit { end_lsn, .. } => pending_ack = Some(end_lsn),
            SourceEvent::Begin { .. } | SourceEvent::Message { .. } => {}
        }
        // Write when the buffer is full or the source has nothing more right now.
        if buf.len() >= STDOUT_CHUNK || rx.is_empty() {
            if !buf.is_empty() {
                out.write_all(&buf).await.map_err(AppError::Stdout)?;
                out.flush().await.map_err(AppError::Stdout)?;
                buf.clear();
            }
            if let Some(lsn) = pending_ack.take() {
                ack.ack(lsn);
            }
        }
    }
    out.write_all(&buf).await.map_err(AppError::Stdout)?;
    out.flush().await.map_err(AppError::Stdout)?;
    if let Some(lsn) = pending_ack {
        ack.ack(lsn);
    }
    Ok(())
}
