//! SMTP / ESMTP (RFC 5321 and extensions) as a sans-I/O state machine.
