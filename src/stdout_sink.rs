//! `walhook run --stdout`: the debug sink. Committed records go to stdout
//! as JSON lines, acknowledged only after they were written and flushed.

use crate::error_class::{Classify, ErrorClass};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::decode::SourceEvent;
use crate::source::{AckHandle, Source, SourceError, SourceOptions};

/// The stdout sink writes in chunks of about this size.
const STDOUT_CHUNK: usize = 64 * 1024;
/// How long a stopping sink waits for the end of the transaction it is printing.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Why `walhook run --stdout` stopped.
#[derive(Debug, thiserror::Error)]
pub enum StdoutError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("writing to stdout: {0}")]
    Write(#[source] std::io::Error),
    #[error("the source task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Classify for StdoutError {
    fn class(&self) -> ErrorClass {
        match self {
            StdoutError::Source(err) => err.class(),
            StdoutError::Write(_) | StdoutError::Task(_) => ErrorClass::Fatal,
        }
    }
}

/// Runs source → stdout until `shutdown` is cancelled or a fatal error.
///
/// Shutdown runs downstream first: the sink finishes the transaction it is
/// printing, flushes and acknowledges, and only then is the source stopped,
/// so its last standby status carries that acknowledgement.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StdoutError> {
    let opts = SourceOptions::from_config(&config.source);
    let (tx, mut rx) = mpsc::channel(opts.channel_capacity);
    let (source, ack, _status) = Source::new(opts);
    let source_stop = CancellationToken::new();
    let source_task = tokio::spawn(source.run(tx, source_stop.clone()));
    let sink = stdout_sink(&mut rx, ack, &shutdown).await;
    // The receiver stays open until the source has stopped: a source that
    // found it closed would report a lost consumer instead of stopping.
    source_stop.cancel();
    let source_result = source_task.await?;
    drop(rx);
    sink?;
    source_result?;
    Ok(())
}

/// The debug sink: each committed record as one JSON line, acknowledged only
/// after the line has been written and flushed. On shutdown it stops at a
/// transaction boundary (waiting at most [`SHUTDOWN_GRACE`] for the open
/// transaction's end), so a clean stop prints whole transactions only.
async fn stdout_sink(
    rx: &mut mpsc::Receiver<SourceEvent>,
    ack: AckHandle,
    shutdown: &CancellationToken,
) -> Result<(), StdoutError> {
    let mut out = tokio::io::stdout();
    let mut buf: Vec<u8> = Vec::with_capacity(STDOUT_CHUNK * 2);
    // The end LSN of the last transaction whose records are all in `buf` or written.
    let mut pending_ack = None;
    let mut in_transaction = false;
    // Set once shutdown is requested: the latest moment to stop.
    let mut stop_by: Option<tokio::time::Instant> = None;
    loop {
        let event = tokio::select! {
            biased;
            // 1. Shutdown: stop now between transactions, else after the open one.
            _ = shutdown.cancelled(), if stop_by.is_none() => {
                if !in_transaction {
                    break;
                }
                tracing::info!("finishing the open transaction before stopping");
                stop_by = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                continue;
            }
            // 2. The grace period for the open transaction is over.
            _ = tokio::time::sleep_until(stop_by.unwrap_or_else(tokio::time::Instant::now)), if stop_by.is_some() => {
                tracing::warn!("stopping inside a transaction; it is printed again after a restart");
                break;
            }
            // 3. The next event.
            event = rx.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        match event {
            SourceEvent::Record(record) => {
                record.write_json(&mut buf);
                buf.push(b'\n');
            }
            SourceEvent::Begin { .. } => in_transaction = true,
            SourceEvent::Commit { end_lsn, .. } => {
                in_transaction = false;
                pending_ack = Some(end_lsn);
            }
            SourceEvent::Message { .. } => {}
        }
        let stopping = stop_by.is_some() && !in_transaction;
        // Write when the buffer is full or the source has nothing more right now.
        if buf.len() >= STDOUT_CHUNK || rx.is_empty() || stopping {
            write_out(&mut out, &mut buf).await?;
            if let Some(lsn) = pending_ack.take() {
                ack.ack(lsn);
            }
        }
        if stopping {
            break;
        }
    }
    write_out(&mut out, &mut buf).await?;
    if let Some(lsn) = pending_ack {
        ack.ack(lsn);
    }
    Ok(())
}

/// Writes and flushes `buf` to stdout, leaving it empty.
async fn write_out(out: &mut tokio::io::Stdout, buf: &mut Vec<u8>) -> Result<(), StdoutError> {
    if buf.is_empty() {
        return Ok(());
    }
    out.write_all(buf).await.map_err(StdoutError::Write)?;
    out.flush().await.map_err(StdoutError::Write)?;
    buf.clear();
    Ok(())
}
