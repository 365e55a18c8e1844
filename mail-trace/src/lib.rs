//! mail-trace: mail sessions from the wire, in data-path order.
//!
//! - [`capture`]: where frames come from — the kernel's ring buffer or a pcap/pcapng
//!   file — as one [`capture::Frame`] type.
//! - [`wire`]: a frame decoded to a TCP segment (etherparse, zero-copy).
//! - [`flow`]: TCP connections, reassembled per direction, with gaps counted.
//! - [`proto`]: sans-I/O protocol state machines (SMTP, POP3, IMAP): bytes in, events out.
//! - [`session`]: the engine joining flows to dissectors, and the session records.
//! - [`output`]: the session tail, JSON lines and pcapng.
//! - [`maillog`]: Postfix and Dovecot log lines, parsed and joined to the sessions.
//! - [`findings`]: what the operator should notice in a session (id, severity, reason).
//! - [`explain`]: plain-English meanings of SMTP, enhanced, POP3 and IMAP status codes.
pub mod capture;
pub mod cmd;
pub mod explain;
pub mod findings;
pub mod flow;
pub mod guard;
pub mod maillog;
pub mod output;
pub mod proto;
pub mod session;
pub mod time;
pub mod wire;
