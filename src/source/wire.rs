//! Backend framing and authentication, without I/O.
//!
//! postgres-protocol's `backend::Message::parse` does not know
//! CopyBothResponse ('W'), the answer to START_REPLICATION, so frames are
//! peeked with `backend::Header` first and 'W' is handled here.

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{
    DataRowBody, ErrorFields, Header, Message, RowDescriptionBody,
};
use postgres_protocol::message::frontend;
use secrecy::{ExposeSecret, SecretString};

use super::error::{DbError, SourceError};
use super::protocol::{Rows, WireError};

/// Largest frame accepted: Postgres never sends a message over 1 GiB.
const MAX_FRAME: usize = (1 << 30) + 4096;

/// One backend message.
pub(crate) enum Frame {
    Message(Message),
    /// CopyBothResponse: the server starts streaming.
    CopyBoth,
}

/// Takes the next complete frame off `buf`; `Ok(None)` when more bytes are needed.
pub(crate) fn next_frame(buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
    let header = match Header::parse(buf) {
        Ok(Some(header)) => header,
        Ok(None) => return Ok(None),
        Err(e) => return Err(WireError(e.to_string())),
    };
    let total = usize::try_from(header.len())
        .ok()
        .and_then(|len| len.checked_add(1))
        .filter(|total| *total <= MAX_FRAME)
        .ok_or_else(|| WireError(format!("frame length {} out of range", header.len())))?;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if header.tag() == b'W' {
        // Int8 format, Int16 column count, Int16 per column: all ignored.
        let frame = buf.split_to(total);
        if frame.len() < 1 + 4 + 1 + 2 {
            return Err(WireError("truncated CopyBothResponse".into()));
        }
        return Ok(Some(Frame::CopyBoth));
    }
    match Message::parse(buf) {
        Ok(Some(message)) => Ok(Some(Frame::Message(message))),
        // Cannot happen with a complete frame buffered; treat as garbage.
        Ok(None) => Err(WireError("incomplete frame".into())),
        Err(e) => {
            // Skip the bad frame so the buffer stays aligned for diagnostics.
            if buf.len() >= total {
                buf.advance(total);
            }
            Err(WireError(format!(
                "bad message {:?}: {e}",
                char::from(header.tag())
            )))
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
pub(crate) fn db_error(mut fields: ErrorFields<'_>) -> Result<DbError, WireError> {
    let mut e = DbError::default();
    let mut localized_severity = None;
    while let Some(field) = fields
        .next()
        .map_err(|err| WireError(format!("bad error fields: {err}")))?
    {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'S' => localized_severity = Some(value),
            b'V' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    if e.severity.is_empty() {
        e.severity = localized_severity.unwrap_or_default();
    }
    Ok(e)
}

/// Column names of a RowDescription.
fn row_description(body: &RowDescriptionBody) -> Result<Vec<String>, WireError> {
    body.fields()
        .map(|f| Ok(f.name().to_string()))
        .collect()
        .map_err(|e| WireError(format!("bad RowDescription: {e}")))
}

/// The text values of a DataRow.
fn data_row(body: &DataRowBody) -> Result<Vec<Option<String>>, WireError> {
    let buf = body.buffer();
    body.ranges()
        .map(|range| {
            Ok(range.map(|r| {
                buf.get(r)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            }))
        })
        .collect()
        .map_err(|e| WireError(format!("bad DataRow: {e}")))
}

/// Collects the result of one simple-query statement.
#[derive(Default)]
pub(crate) struct RowCollector {
    pub(crate) rows: Rows,
}

impl RowCollector {
    /// Feeds a message; returns true when it was part of a result set.
    pub(crate) fn on_message(&mut self, message: &Message) -> Result<bool, WireError> {
        match message {
            Message::RowDescription(body) => {
                self.rows = Rows {
                    columns: row_description(body)?,
                    rows: Vec::new(),
                };
            }
            Message::DataRow(body) => self.rows.rows.push(data_row(body)?),
            Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The client side of startup authentication.
pub(crate) struct Authenticator<'a> {
    user: &'a str,
    password: Option<&'a SecretString>,
    target: &'a str,
    scram: Option<ScramSha256>,
}

impl<'a> Authenticator<'a> {
    pub(crate) fn new(user: &'a str, password: Option<&'a SecretString>, target: &'a str) -> Self {
        Authenticator {
            user,
            password,
            target,
            scram: None,
        }
    }

    fn password(&self) -> Result<&'a [u8], SourceError> {
        self.password
            .map(|p| p.expose_secret().as_bytes())
            .ok_or_else(|| SourceError::PasswordMissing {
                user: self.user.to_string(),
                target: self.target.to_string(),
            })
    }

    fn unsupported(&self, method: &str) -> SourceError {
        SourceError::UnsupportedAuth {
            user: self.user.to_string(),
            target: self.target.to_string(),
            method: method.to_string(),
        }
    }

    fn scram_error(&self, e: std::io::Error) -> SourceError {
        SourceError::Protocol {
            target: self.target.to_string(),
            reason: format!("SCRAM-SHA-256 exchange failed: {e}"),
        }
    }

    fn encode(&self, result: std::io::Result<()>) -> Result<(), SourceError> {
        result.map_err(|e| SourceError::Protocol {
            target: self.target.to_string(),
            reason: format!("cannot encode an authentication message: {e}"),
        })
    }

    /// Handles an Authentication* message, writing any reply to `out`.
    /// Returns true on AuthenticationOk.
    pub(crate) fn on_message(
        &mut self,
        message: &Message,
        out: &mut BytesMut,
    ) -> Result<bool, SourceError> {
        match message {
            Message::AuthenticationOk => return Ok(true),
            Message::AuthenticationCleartextPassword => {
                self.encode(frontend::password_message(self.password()?, out))?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(self.user.as_bytes(), self.password()?, body.salt());
                self.encode(frontend::password_message(hash.as_bytes(), out))?;
            }
            Message::AuthenticationSasl(body) => {
                let mut offered = Vec::new();
                let mut mechanisms = body.mechanisms();
                while let Some(m) = mechanisms.next().map_err(|e| self.scram_error(e))? {
                    offered.push(m.to_string());
                }
                if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(self.unsupported(&format!("SASL {}", offered.join(", "))));
                }
                // No channel binding: tokio-postgres does the same without binding data.
                let scram = ScramSha256::new(self.password()?, ChannelBinding::unsupported());
                self.encode(frontend::sasl_initial_response(
                    SCRAM_SHA_256,
                    scram.message(),
                    out,
                ))?;
                self.scram = Some(scram);
            }
            Message::AuthenticationSaslContinue(body) => {
                let Some(mut scram) = self.scram.take() else {
                    return Err(self.scram_error(std::io::Error::other("unexpected SASLContinue")));
                };
                scram.update(body.data()).map_err(|e| self.scram_error(e))?;
                self.encode(frontend::sasl_response(scram.message(), out))?;
                self.scram = Some(scram);
            }
            Message::AuthenticationSaslFinal(body) => {
                let Some(mut scram) = self.scram.take() else {
                    return Err(self.scram_error(std::io::Error::other("unexpected SASLFinal")));
                };
                // Verifies the server's signature: the server knows the password too.
                scram.finish(body.data()).map_err(|e| self.scram_error(e))?;
            }
            Message::AuthenticationKerberosV5 => return Err(self.unsupported("Kerberos V5")),
            Message::AuthenticationScmCredential => return Err(self.unsupported("SCM credentials")),
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(self.unsupported("GSSAPI"))
            }
            Message::AuthenticationSspi => return Err(self.unsupported("SSPI")),
            _ => {
                return Err(SourceError::Protocol {
                    target: self.target.to_string(),
                    reason: "unexpected message during authentication".into(),
                })
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn copy_both_response_is_recognised() {
        let mut buf = BytesMut::from(&frame(b'W', &[0, 0, 0])[..]);
        buf.extend_from_slice(&frame(b'd', b"k")[..2]);
        assert!(matches!(next_frame(&mut buf), Ok(Some(Frame::CopyBoth))));
        // The next frame is incomplete.
        assert!(matches!(next_frame(&mut buf), Ok(None)));
        assert!(next_frame(&mut BytesMut::from(&frame(b'W', &[0])[..])).is_err());
    }

    #[test]
    fn copy_data_frames_come_out_whole() {
        let mut buf = BytesMut::new();
        buf.put_slice(&frame(b'd', b"w-payload"));
        buf.put_slice(&frame(b'Z', b"I"));
        let Some(Frame::Message(Message::CopyData(d))) = next_frame(&mut buf).unwrap() else {
            panic!("expected CopyData")
        };
        assert_eq!(d.data(), b"w-payload");
        assert!(matches!(
            next_frame(&mut buf).unwrap(),
            Some(Frame::Message(Message::ReadyForQuery(_)))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_frames_are_errors_not_panics() {
        // Length below 4.
        assert!(next_frame(&mut BytesMut::from(&[b'd', 0, 0, 0, 1][..])).is_err());
        // Absurd length.
        assert!(next_frame(&mut BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..])).is_err());
        // Unknown tag.
        assert!(next_frame(&mut BytesMut::from(&frame(b'?', b"")[..])).is_err());
        // ReadyForQuery without its status byte.
        assert!(next_frame(&mut BytesMut::from(&frame(b'Z', b"")[..])).is_err());
        // Every prefix of a valid stream is "need more", never a panic.
        let whole = frame(b'E', b"SERROR\0C28P01\0Mbad\0\0");
        for n in 0..whole.len() {
            assert!(matches!(
                next_frame(&mut BytesMut::from(&whole[..n])),
                Ok(None)
            ));
        }
    }

    #[test]
    fn error_response_keeps_sqlstate_message_detail_hint() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"bob\"\0Dd\0Hh\0Rauth_failed\0\0";
        let mut buf = BytesMut::from(&frame(b'E', body)[..]);
        let Some(Frame::Message(Message::ErrorResponse(e))) = next_frame(&mut buf).unwrap() else {
            panic!("expected ErrorResponse")
        };
        let e = db_error(e.fields()).unwrap();
        assert_eq!(e.severity, "FATAL");
        assert_eq!(e.code, "28P01");
        assert_eq!(e.message, "password authentication failed for user \"bob\"");
        assert_eq!(e.detail.as_deref(), Some("d"));
        assert_eq!(e.hint.as_deref(), Some("h"));
    }

    #[test]
    fn rows_are_collected() {
        let mut desc = Vec::new();
        desc.extend_from_slice(&2u16.to_be_bytes());
        for name in ["a", "b"] {
            desc.extend_from_slice(name.as_bytes());
            desc.push(0);
            desc.extend_from_slice(&[0; 18]);
        }
        let mut row = Vec::new();
        row.extend_from_slice(&2u16.to_be_bytes());
        row.extend_from_slice(&1i32.to_be_bytes());
        row.push(b'x');
        row.extend_from_slice(&(-1i32).to_be_bytes());
        let mut buf = BytesMut::new();
        buf.put_slice(&frame(b'T', &desc));
        buf.put_slice(&frame(b'D', &row));
        let mut c = RowCollector::default();
        while let Some(Frame::Message(m)) = next_frame(&mut buf).unwrap() {
            assert!(c.on_message(&m).unwrap());
        }
        assert_eq!(c.rows.get(0, "a"), Some("x"));
        assert_eq!(c.rows.get(0, "b"), None);
        // A DataRow claiming more bytes than it holds.
        let mut bad = Vec::new();
        bad.extend_from_slice(&1u16.to_be_bytes());
        bad.extend_from_slice(&10i32.to_be_bytes());
        bad.push(b'x');
        let mut buf = BytesMut::from(&frame(b'D', &bad)[..]);
        let Some(Frame::Message(m)) = next_frame(&mut buf).unwrap() else {
            panic!()
        };
        assert!(c.on_message(&m).is_err());
    }

    fn auth_message(code: i32, rest: &[u8]) -> Message {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        let mut buf = BytesMut::from(&frame(b'R', &body)[..]);
        match next_frame(&mut buf).unwrap() {
            Some(Frame::Message(m)) => m,
            _ => panic!("no message"),
        }
    }

    #[test]
    fn md5_and_cleartext_replies() {
        let pw = SecretString::from("secret");
        let mut auth = Authenticator::new("bob", Some(&pw), "h:5432");
        let mut out = BytesMut::new();
        assert!(!auth
            .on_message(&auth_message(5, &[1, 2, 3, 4]), &mut out)
            .unwrap());
        let expected = md5_hash(b"bob", b"secret", [1, 2, 3, 4]);
        assert_eq!(out[0], b'p');
        assert_eq!(&out[5..out.len() - 1], expected.as_bytes());
        out.clear();
        auth.on_message(&auth_message(3, &[]), &mut out).unwrap();
        assert_eq!(&out[5..out.len() - 1], b"secret");
        assert!(auth.on_message(&auth_message(0, &[]), &mut out).unwrap());
    }

    #[test]
    fn missing_password_and_unsupported_methods_name_the_role() {
        let mut auth = Authenticator::new("bob", None, "db:5432");
        let err = auth
            .on_message(&auth_message(3, &[]), &mut BytesMut::new())
            .unwrap_err();
        assert!(err.to_string().contains("\"bob\"") && err.to_string().contains("db:5432"));
        let err = auth
            .on_message(&auth_message(7, &[]), &mut BytesMut::new())
            .unwrap_err();
        assert!(err.to_string().contains("GSSAPI"), "{err}");
        let pw = SecretString::from("x");
        let mut auth = Authenticator::new("bob", Some(&pw), "db:5432");
        let err = auth
            .on_message(&auth_message(10, b"OTHER-MECH\0\0"), &mut BytesMut::new())
            .unwrap_err();
        assert!(err.to_string().contains("OTHER-MECH"), "{err}");
        // SASLContinue out of order.
        assert!(auth
            .on_message(&auth_message(11, b"r=x"), &mut BytesMut::new())
            .is_err());
    }

    #[test]
    fn scram_first_message_is_sent() {
        let pw = SecretString::from("x");
        let mut auth = Authenticator::new("bob", Some(&pw), "db:5432");
        let mut out = BytesMut::new();
        auth.on_message(
            &auth_message(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            &mut out,
        )
        .unwrap();
        assert_eq!(out[0], b'p');
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("SCRAM-SHA-256\0"));
        assert!(text.contains("n,,n=,r="), "{text}");
        // A garbled server-first message is an error, not a panic.
        assert!(auth
            .on_message(&auth_message(11, b"garbage"), &mut BytesMut::new())
            .is_err());
    }
}
