//! The replication connection: TCP or Unix socket, optional TLS, startup
//! with `replication=database`, authentication, simple queries, and the
//! CopyBoth stream. A thin async shell over [`wire`](super::wire) and
//! [`protocol`](super::protocol).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::error::{sqlstate, DbError, SourceError};
use super::protocol::{Rows, StandbyStatus};
use super::wire::{self, Frame, RowCollector};
use crate::pg::conninfo::{ConnInfo, SslMode, Target, UrlError};
use crate::pg::tls::{self, TlsError};

/// Session settings pinned at startup so text output is stable (the same
/// options core's walreceiver sends, plus hex bytea so the decoder never sees
/// the escape format).
const STARTUP_OPTIONS: &str = "-c datestyle=ISO -c intervalstyle=postgres \
     -c extra_float_digits=3 -c timezone=UTC -c bytea_output=hex";

const READ_CHUNK: usize = 64 * 1024;

/// TCP keepalive (an idle connection is probed after 10 s, every 5 s) and
/// `TCP_USER_TIMEOUT` on the replication socket; best effort (a platform
/// without them keeps the application's silence limit).
fn set_liveness(tcp: &TcpStream, user_timeout: Duration) {
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive on the replication connection");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = socket.set_tcp_user_timeout(Some(user_timeout)) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT on the replication connection");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = user_timeout;
}

/// A byte stream to the server.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An authenticated replication connection.
pub(crate) struct ReplConn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
    /// True when the stream is encrypted.
    pub(crate) tls: bool,
    /// `server_version` as reported at startup.
    server_version: Option<String>,
    /// `in_hot_standby` as reported at startup (PostgreSQL 14+).
    in_hot_standby: bool,
    /// The walsender's PID (BackendKeyData).
    backend_pid: Option<i32>,
}

impl ReplConn {
    /// Connects to the first target that accepts a connection (libpq's rule:
    /// later hosts are tried only when a host cannot be reached).
    pub(crate) async fn connect(
        info: &ConnInfo,
        application_name: &str,
    ) -> Result<ReplConn, SourceError> {
        let mut last = None;
        for target in &info.targets {
            let name = target.to_string();
            let attempt = tokio::time::timeout(
                info.connect_timeout,
                Self::connect_one(info, target, application_name),
            )
            .await
            .unwrap_or_else(|_| {
                Err(SourceError::ConnectTimeout {
                    target: name,
                    secs: info.connect_timeout.as_secs(),
                })
            });
            match attempt {
                // libpq's target_session_attrs=read-write: a standby is
                // passed over for the next host.
                Ok(conn) if info.read_write && conn.in_hot_standby => {
                    last = Some(SourceError::NotPrimary {
                        target: conn.target().to_string(),
                    });
                }
                Ok(conn) => return Ok(conn),
                Err(
                    e @ (SourceError::Connect { .. }
                    | SourceError::ConnectTimeout { .. }
                    | SourceError::Io { .. }
                    | SourceError::Closed { .. }
                    | SourceError::NotPrimary { .. }),
                ) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            SourceError::InvalidUrl(UrlError::Invalid("no host to connect to".into()))
        }))
    }

    /// Gives a dead TCP peer up after `user_timeout` of unacknowledged
    /// data (and probes an idle one): see [`super::protocol::user_timeout`].
    pub(crate) fn set_user_timeout(&self, user_timeout: Duration) {
        match &self.stream {
            Stream::Tcp(tcp) => set_liveness(tcp, user_timeout),
            Stream::Tls(tls) => set_liveness(tls.get_ref().0, user_timeout),
            #[cfg(unix)]
            Stream::Unix(_) => {}
        }
    }

    /// The address this connection talks to, for messages.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    async fn connect_one(
        info: &ConnInfo,
        target: &Target,
        application_name: &str,
    ) -> Result<ReplConn, SourceError> {
        let name = target.to_string();
        let connect_err = |source| SourceError::Connect {
            target: name.clone(),
            source,
        };
        let stream = match target {
            Target::Tcp { host, addr, port } => {
                let tcp = match addr {
                    Some(ip) => TcpStream::connect((*ip, *port)).await,
                    None => TcpStream::connect((host.as_str(), *port)).await,
                }
                .map_err(connect_err)?;
                let _ = tcp.set_nodelay(true);
                // Until the server's wal_sender_timeout is known.
                set_liveness(&tcp, Duration::from_secs(30));
                negotiate_tls(tcp, info, host, &name).await?
            }
            #[cfg(unix)]
            Target::Unix { dir, port } => {
                // Like libpq: no TLS over Unix sockets.
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Stream::Unix(UnixStream::connect(path).await.map_err(connect_err)?)
            }
            #[cfg(not(unix))]
            Target::Unix { .. } => {
                return Err(SourceError::InvalidUrl(UrlError::Invalid(
                    "Unix sockets are not supported on this platform".into(),
                )))
            }
        };
        let tls = matches!(stream, Stream::Tls(_));
        let mut conn = ReplConn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            target: name,
            tls,
            server_version: None,
            in_hot_standby: false,
            backend_pid: None,
        };
        conn.startup(info, application_name).await?;
        Ok(conn)
    }

    async fn startup(
        &mut self,
        info: &ConnInfo,
        application_name: &str,
    ) -> Result<(), SourceError> {
        let params = [
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("replication", "database"),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
            ("options", STARTUP_OPTIONS),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.wbuf).map_err(|e| {
            SourceError::InvalidUrl(UrlError::Invalid(format!(
                "cannot encode the startup message: {e}"
            )))
        })?;
        self.send().await?;

        let target = self.target.clone();
        let mut auth = wire::Authenticator::new(&info.user, info.password.as_ref(), &target);
        let mut authenticated = false;
        loop {
            let Frame::Message(message) = self.read_frame().await? else {
                return Err(self.protocol("CopyBothResponse during startup"));
            };
            match message {
                Message::ErrorResponse(body) => {
                    let error = wire::db_error(body.fields()).map_err(|e| self.protocol(&e.0))?;
                    return Err(if error.code == sqlstate::INVALID_PASSWORD {
                        SourceError::AuthFailed {
                            user: info.user.clone(),
                            target: self.target.clone(),
                            error: Box::new(error),
                        }
                    } else {
                        SourceError::Server {
                            context: format!("connecting as role \"{}\"", info.user),
                            target: self.target.clone(),
                            error: Box::new(error),
                        }
                    });
                }
                Message::ParameterStatus(body) => match body.name().ok() {
                    Some("server_version") => {
                        self.server_version = body.value().ok().map(str::to_string);
                    }
                    Some("in_hot_standby") => {
                        self.in_hot_standby = body.value().ok() == Some("on");
                    }
                    _ => {}
                },
                Message::BackendKeyData(body) => self.backend_pid = Some(body.process_id()),
                Message::NoticeResponse(body) => log_notice(body.fields()),
                Message::ReadyForQuery(_) if authenticated => return Ok(()),
                other if !authenticated => {
                    authenticated = auth.on_message(&other, &mut self.wbuf)?;
                    if !self.wbuf.is_empty() {
                        self.send().await?;
                    }
                }
                _ => return Err(self.protocol("unexpected message during startup")),
            }
        }
    }

    fn protocol(&self, reason: &str) -> SourceError {
        SourceError::Protocol {
            target: self.target.clone(),
            reason: reason.to_string(),
        }
    }

    fn server_error(&self, context: &str, error: DbError) -> SourceError {
        SourceError::Server {
            context: context.to_string(),
            target: self.target.clone(),
            error: Box::new(error),
        }
    }

    /// Writes out everything queued.
    async fn send(&mut self) -> Result<(), SourceError> {
        let result = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        }
        .await;
        self.wbuf.clear();
        result.map_err(|source| SourceError::Io {
            target: self.target.clone(),
            source,
        })
    }

    /// The next complete frame already buffered, if any.
    pub(crate) fn try_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        wire::next_frame(&mut self.rbuf).map_err(|e| self.protocol(&e.0))
    }

    /// Reads more bytes from the socket (cancel-safe: use it in `select!`).
    pub(crate) async fn fill(&mut self) -> Result<(), SourceError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(SourceError::Closed {
                target: self.target.clone(),
            }),
            Ok(_) => Ok(()),
            Err(source) => Err(SourceError::Io {
                target: self.target.clone(),
                source,
            }),
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Runs one statement with the simple query protocol and returns its rows.
    pub(crate) async fn simple_query(
        &mut self,
        context: &str,
        sql: &str,
    ) -> Result<Rows, SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.protocol(&e.to_string()))?;
        self.send().await?;
        let mut rows = RowCollector::default();
        let mut failed = None;
        loop {
            let Frame::Message(message) = self.read_frame().await? else {
                return Err(self.protocol("unexpected CopyBothResponse"));
            };
            match message {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => {
                    let error = wire::db_error(body.fields()).map_err(|e| self.protocol(&e.0))?;
                    // After FATAL the server hangs up instead of sending ReadyForQuery.
                    if matches!(error.severity.as_str(), "FATAL" | "PANIC") {
                        return Err(self.server_error(context, error));
                    }
                    failed = Some(error);
                }
                Message::NoticeResponse(body) => log_notice(body.fields()),
                Message::ParameterStatus(_) => {}
                other => {
                    if !rows.on_message(&other).map_err(|e| self.protocol(&e.0))? {
                        return Err(
                            self.protocol(&format!("unexpected message in reply to {context}"))
                        );
                    }
                }
            }
        }
        match failed {
            Some(error) => Err(self.server_error(context, error)),
            None => Ok(rows.rows),
        }
    }

    /// Sends START_REPLICATION and waits for CopyBothResponse.
    pub(crate) async fn start_copy_both(&mut self, sql: &str) -> Result<(), SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.protocol(&e.to_string()))?;
        self.send().await?;
        loop {
            match self.read_frame().await? {
                Frame::CopyBoth => return Ok(()),
                Frame::Message(Message::ErrorResponse(body)) => {
                    let error = wire::db_error(body.fields()).map_err(|e| self.protocol(&e.0))?;
                    return Err(self.server_error("START_REPLICATION", error));
                }
                Frame::Message(Message::NoticeResponse(body)) => log_notice(body.fields()),
                Frame::Message(Message::ParameterStatus(_)) => {}
                Frame::Message(_) => {
                    return Err(self.protocol("unexpected reply to START_REPLICATION"))
                }
            }
        }
    }

    /// Sends a standby status update.
    pub(crate) async fn send_status(&mut self, status: &StandbyStatus) -> Result<(), SourceError> {
        let mut payload = BytesMut::with_capacity(super::protocol::STANDBY_STATUS_LEN);
        status.encode(&mut payload);
        frontend::CopyData::new(payload)
            .map_err(|e| self.protocol(&e.to_string()))?
            .write(&mut self.wbuf);
        self.send().await
    }

    /// Closes a connection that is not streaming: Terminate, then the
    /// socket. Errors are ignored: we are leaving anyway.
    pub(crate) async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.send().await;
        let _ = self.stream.shutdown().await;
    }

    /// Ends streaming politely: CopyDone, drain until ReadyForQuery (bounded
    /// by `wait`), Terminate. Errors are ignored: we are leaving anyway.
    pub(crate) async fn finish(mut self, wait: Duration) {
        frontend::copy_done(&mut self.wbuf);
        if self.send().await.is_err() {
            return;
        }
        let drain = async {
            loop {
                match self.read_frame().await {
                    Ok(Frame::Message(Message::ReadyForQuery(_))) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(wait, drain).await;
        frontend::terminate(&mut self.wbuf);
        let _ = self.send().await;
        let _ = self.stream.shutdown().await;
    }
}

async fn negotiate_tls(
    mut tcp: TcpStream,
    info: &ConnInfo,
    host: &str,
    target: &str,
) -> Result<Stream, SourceError> {
    if info.ssl_mode == SslMode::Disable {
        return Ok(Stream::Tcp(tcp));
    }
    let io_err = |source| SourceError::Io {
        target: target.to_string(),
        source,
    };
    let mut request = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(io_err)?;
    let answer = tcp.read_u8().await.map_err(io_err)?;
    match answer {
        b'S' => {}
        b'N' if info.ssl_mode.requires_tls() => {
            return Err(SourceError::TlsRefused {
                target: target.to_string(),
                mode: info.ssl_mode.as_str(),
            })
        }
        b'N' => return Ok(Stream::Tcp(tcp)),
        other => {
            return Err(SourceError::Protocol {
                target: target.to_string(),
                reason: format!("unexpected answer {:?} to SSLRequest", char::from(other)),
            })
        }
    }
    let config = tls::client_config(info.ssl_mode, &info.root_certs, target)?;
    let name = tls::server_name(host, info.ssl_mode, target)?;
    match TlsConnector::from(config).connect(name, tcp).await {
        Ok(stream) => Ok(Stream::Tls(Box::new(stream))),
        // rustls reports certificate and handshake problems as InvalidData.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(SourceError::Tls(TlsError {
            target: target.to_string(),
            reason: e.to_string(),
        })),
        Err(source) => Err(SourceError::Io {
            target: target.to_string(),
            source,
        }),
    }
}

fn log_notice(fields: postgres_protocol::message::backend::ErrorFields<'_>) {
    if let Ok(notice) = wire::db_error(fields) {
        tracing::info!(sqlstate = %notice.code, message = %notice.message, "server notice");
    }
}
