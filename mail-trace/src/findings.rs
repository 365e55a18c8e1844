//! Findings: what an operator should notice in a session, each with a stable id,
//! a severity and a one-line reason naming the evidence.
//!
//! The functions here are pure: each takes the facts a dissector kept and
//! decides one finding. The dissectors put the result in their record's
//! `findings` list (and emit [`crate::proto::Event::Finding`] for the ones known
//! the moment they happen).
//!
//! | id | severity | evidence |
//! |----|----------|----------|
//! | `auth-before-tls` | warn | AUTH/LOGIN/USER… in clear although the server offered STARTTLS/STLS |
//! | `auth-cleartext` | warn | AUTH… in clear on a server that offered no TLS |
//! | `starttls-offered-not-used` | info on 25, warn elsewhere | the client never asked for TLS |
//! | `starttls-failed` | warn | STARTTLS refused, or accepted but no TLS ClientHello followed |
//! | `starttls-not-offered` | warn; alert when the same server offered it earlier in the run | possible stripping |
//! | `submission-without-auth` | warn | a message accepted on 587 without a successful AUTH |
//! | `from-mismatch` | info (same organisational domain) / alert | header From domain ≠ envelope domain |
//! | `helo-suspicious` | warn | bare IP, `localhost`, foreign address literal, name without a dot |
//! | `smtp-smuggling` | alert with fake end-of-data markers, warn otherwise | bare LF/CR, long lines in DATA |
//! | `pipelining-violation` | warn | commands pipelined without PIPELINING offered |
//! | `smime`, `pgp`, `dkim-signed`, `dsn` | info | facts about the message |
pub mod domain;
pub mod dsn;

use std::net::IpAddr;

use crate::proto::smtp::BodyFacts;

/// How much a finding matters. Ordered: `Info < Warn < Alert`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
    Alert,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Alert => "alert",
        }
    }

    /// The severity named in a record's JSON.
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warn" => Some(Severity::Warn),
            "alert" => Some(Severity::Alert),
            _ => None,
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub reason: String,
}

impl Finding {
    pub fn new(id: &'static str, severity: Severity, reason: impl Into<String>) -> Self {
        Finding {
            id,
            severity,
            reason: reason.into(),
        }
    }
}

/// Findings kept per session; more are dropped (the record stays bounded).
pub const MAX_FINDINGS: usize = 64;

/// Adds `f` unless the same finding is already there or the list is full.
pub fn push(list: &mut Vec<Finding>, f: Finding) {
    if list.len() < MAX_FINDINGS && !list.contains(&f) {
        list.push(f);
    }
}

/// The highest severity in a record's `findings` JSON list.
pub fn max_severity(findings: Option<&serde_json::Value>) -> Option<Severity> {
    findings?
        .as_array()?
        .iter()
        .filter_map(|f| f.get("severity")?.as_str().and_then(Severity::parse))
        .max()
}

/// Ports where STARTTLS is expected (25, 587, 110, 143).
pub fn expects_starttls(port: u16) -> bool {
    matches!(port, 25 | 587 | 110 | 143)
}

/// What a session showed about TLS, for the TLS and cleartext-credential findings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPicture {
    /// The server port, when known.
    pub port: Option<u16>,
    /// TLS from the first byte (465/993/995): nothing was ever in clear.
    pub implicit: bool,
    /// Whether the server offered STARTTLS/STLS; None when its capabilities were not seen.
    pub offered: Option<bool>,
    /// The same server offered it in an earlier session of this run.
    pub offered_before: bool,
    /// The command's reply when it was refused ("454", "-ERR", "NO").
    pub refused: Option<String>,
    /// The server accepted it (the session turned to TLS).
    pub started: bool,
    /// A TLS ClientHello followed the acceptance.
    pub client_hello: bool,
    /// The first credential sent in clear, as shown ("AUTH PLAIN", "USER/PASS", "LOGIN").
    pub auth_in_clear: Option<String>,
}

/// The TLS handshake began but failed (`why` from [`crate::proto::tls::TlsInfo::failed`]):
/// the session is not protected, whatever the hellos offered.
pub fn tls_handshake_failed(why: &str) -> Finding {
    Finding::new(
        "tls-handshake-failed",
        Severity::Warn,
        format!("the TLS handshake failed: {why}"),
    )
}

/// The TLS command's name in each protocol.
pub fn starttls_verb(proto: crate::proto::Proto) -> &'static str {
    match proto {
        crate::proto::Proto::Pop3 => "STLS",
        _ => "STARTTLS",
    }
}

/// A credential in clear: `auth-before-tls` when TLS was on offer, else `auth-cleartext`.
pub fn auth_in_clear(what: &str, verb: &str, offered: Option<bool>) -> Finding {
    match offered {
        Some(true) => Finding::new(
            "auth-before-tls",
            Severity::Warn,
            format!("{what} sent in clear although the server offered {verb}"),
        ),
        Some(false) => Finding::new(
            "auth-cleartext",
            Severity::Warn,
            format!("{what} sent in clear; the server offered no {verb}"),
        ),
        None => Finding::new(
            "auth-cleartext",
            Severity::Warn,
            format!("{what} sent in clear (the server's capabilities were not seen)"),
        ),
    }
}

/// Every TLS finding of one session. `verb` is STARTTLS or STLS.
pub fn tls_findings(p: &TlsPicture, verb: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    if p.implicit {
        return out;
    }
    if let Some(what) = &p.auth_in_clear {
        out.push(auth_in_clear(what, verb, p.offered));
    }
    if let Some(code) = &p.refused {
        out.push(Finding::new(
            "starttls-failed",
            Severity::Warn,
            format!("{verb} refused with {code}; the session stayed in clear"),
        ));
    } else if p.started && !p.client_hello {
        out.push(Finding::new(
            "starttls-failed",
            Severity::Warn,
            format!("{verb} accepted but no TLS ClientHello followed"),
        ));
    }
    let port = p.port.unwrap_or(0);
    match p.offered {
        Some(true) if !p.started && p.refused.is_none() && p.auth_in_clear.is_none() => {
            let severity = if port == 25 {
                Severity::Info
            } else {
                Severity::Warn
            };
            out.push(Finding::new(
                "starttls-offered-not-used",
                severity,
                format!("the server offered {verb} but the client stayed in clear"),
            ));
        }
        Some(false) if expects_starttls(port) && !p.started => {
            out.push(if p.offered_before {
                Finding::new(
                    "starttls-not-offered",
                    Severity::Alert,
                    format!(
                        "no {verb} offered on port {port}, although this server offered it \
                         earlier in this run: possible STARTTLS stripping"
                    ),
                )
            } else {
                Finding::new(
                    "starttls-not-offered",
                    Severity::Warn,
                    format!("the server offered no {verb} on port {port}"),
                )
            });
        }
        _ => {}
    }
    out
}

/// `submission-without-auth`: a message accepted on the submission port without AUTH.
pub fn submission_without_auth(queue_id: Option<&str>) -> Finding {
    let what = match queue_id {
        Some(q) => format!("message {q}"),
        None => "a message".to_string(),
    };
    Finding::new(
        "submission-without-auth",
        Severity::Warn,
        format!("{what} accepted on port 587 without a successful AUTH"),
    )
}

/// `from-mismatch`: the header From domain against the envelope sender's domain.
/// A null sender (bounces) or a missing side is not a mismatch.
pub fn from_mismatch(header: &str, envelope_sender: &str) -> Option<Finding> {
    let env = envelope_sender.rsplit_once('@')?.1.to_ascii_lowercase();
    let env = env.trim_end_matches('.');
    let hdr = header.to_ascii_lowercase();
    let hdr = hdr.trim_end_matches('.');
    if env.is_empty() || hdr.is_empty() || env == hdr {
        return None;
    }
    let (ho, eo) = (domain::organisational(hdr), domain::organisational(env));
    Some(if ho == eo {
        Finding::new(
            "from-mismatch",
            Severity::Info,
            format!(
                "header From domain {hdr} differs from envelope domain {env} \
                 (same organisational domain {ho})"
            ),
        )
    } else {
        Finding::new(
            "from-mismatch",
            Severity::Alert,
            format!("header From domain {hdr} differs from envelope domain {env}"),
        )
    })
}

/// `helo-suspicious`: what the HELO/EHLO argument says about the client.
pub fn helo_suspicious(helo: &str, client: Option<IpAddr>) -> Option<Finding> {
    let h = helo.trim();
    let why = if h.is_empty() {
        "an empty HELO".to_string()
    } else if h.parse::<IpAddr>().is_ok() {
        format!("HELO {h} is a bare IP address (an address literal needs brackets)")
    } else if h.eq_ignore_ascii_case("localhost") || h.eq_ignore_ascii_case("localhost.localdomain")
    {
        format!("HELO {h} names no host")
    } else if let Some(inner) = h.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let addr = inner
            .strip_prefix("IPv6:")
            .or_else(|| inner.strip_prefix("ipv6:"))
            .unwrap_or(inner);
        match (addr.parse::<IpAddr>(), client) {
            (Err(_), _) => format!("HELO {h} is a malformed address literal"),
            (Ok(a), Some(c)) if a != canonical(c) && canonical(a) != canonical(c) => {
                format!("HELO {h} differs from the client address {c}")
            }
            _ => return None,
        }
    } else if !h.contains('.') {
        format!("HELO {h} is a name without a dot")
    } else {
        return None;
    };
    Some(Finding::new("helo-suspicious", Severity::Warn, why))
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// `smtp-smuggling`: the message bytes of one transaction.
pub fn smtp_smuggling(f: &BodyFacts) -> Option<Finding> {
    let mut parts = Vec::new();
    for (n, what) in [
        (
            f.fake_end_markers,
            "fake end-of-data markers (<LF>.<LF> and kin)",
        ),
        (f.bare_lf, "bare LF"),
        (f.bare_cr, "bare CR"),
        (f.long_lines, "lines over 1000 octets"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if parts.is_empty() {
        return None;
    }
    let severity = if f.fake_end_markers > 0 {
        Severity::Alert
    } else {
        Severity::Warn
    };
    Some(Finding::new(
        "smtp-smuggling",
        severity,
        format!("message data with {}", parts.join(", ")),
    ))
}

/// `pipelining-violation`: `n` commands pipelined without PIPELINING offered.
pub fn pipelining_violation(n: u64) -> Option<Finding> {
    (n > 0).then(|| {
        Finding::new(
            "pipelining-violation",
            Severity::Warn,
            format!("{n} commands pipelined although the server did not offer PIPELINING"),
        )
    })
}

/// `smime` / `pgp` from the top-level media type and its `protocol` parameter.
pub fn secure_mime(media_type: &str, protocol: Option<&str>) -> Option<Finding> {
    let proto = protocol.unwrap_or("").to_ascii_lowercase();
    let (id, what) = match media_type {
        "application/pkcs7-mime" | "application/x-pkcs7-mime" => (
            "smime",
            "S/MIME (application/pkcs7-mime: enveloped or signed data)",
        ),
        "multipart/signed" if proto.contains("pkcs7-signature") => {
            ("smime", "S/MIME signed (multipart/signed, pkcs7-signature)")
        }
        "multipart/signed" if proto == "application/pgp-signature" => {
            ("pgp", "OpenPGP signed (multipart/signed, pgp-signature)")
        }
        "multipart/encrypted" if proto.is_empty() || proto == "application/pgp-encrypted" => {
            ("pgp", "OpenPGP encrypted (multipart/encrypted)")
        }
        _ => return None,
    };
    Some(Finding::new(
        id,
        Severity::Info,
        format!("message is {what}"),
    ))
}

/// `dkim-signed`: the d= domains of the DKIM-Signature headers.
pub fn dkim_signed(domains: &[String]) -> Option<Finding> {
    (!domains.is_empty()).then(|| {
        Finding::new(
            "dkim-signed",
            Severity::Info,
            format!("DKIM-signed by d={}", domains.join(", d=")),
        )
    })
}

/// The d= tag of one DKIM-Signature header value (lower-cased, bounded).
pub fn dkim_domain(value: &str) -> Option<String> {
    value.split(';').find_map(|tag| {
        let (k, v) = tag.split_once('=')?;
        (k.trim() == "d").then(|| {
            let d: String = v.chars().filter(|c| !c.is_whitespace()).take(253).collect();
            d.to_ascii_lowercase()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[Finding]) -> Vec<(&'static str, Severity)> {
        v.iter().map(|f| (f.id, f.severity)).collect()
    }

    #[test]
    fn severity_orders_and_serialises() {
        assert!(Severity::Info < Severity::Warn && Severity::Warn < Severity::Alert);
        let f = Finding::new("smime", Severity::Info, "x");
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"id":"smime","severity":"info","reason":"x"}"#
        );
        let list = serde_json::json!([{"severity": "warn"}, {"severity": "info"}]);
        assert_eq!(max_severity(Some(&list)), Some(Severity::Warn));
        assert_eq!(max_severity(Some(&serde_json::json!([]))), None);
    }

    #[test]
    fn auth_before_tls_and_cleartext() {
        let mut p = TlsPicture {
            port: Some(587),
            offered: Some(true),
            auth_in_clear: Some("AUTH PLAIN".into()),
            ..Default::default()
        };
        let f = tls_findings(&p, "STARTTLS");
        assert_eq!(
            f,
            vec![Finding::new(
                "auth-before-tls",
                Severity::Warn,
                "AUTH PLAIN sent in clear although the server offered STARTTLS"
            )]
        );
        p.offered = Some(false);
        assert_eq!(
            ids(&tls_findings(&p, "STARTTLS")),
            vec![
                ("auth-cleartext", Severity::Warn),
                ("starttls-not-offered", Severity::Warn)
            ]
        );
        // AUTH after STARTTLS is invisible to us: nothing in clear, nothing found.
        let after = TlsPicture {
            port: Some(587),
            offered: Some(true),
            started: true,
            client_hello: true,
            ..Default::default()
        };
        assert_eq!(tls_findings(&after, "STARTTLS"), vec![]);
        // Implicit TLS is never cleartext.
        let implicit = TlsPicture {
            port: Some(465),
            implicit: true,
            auth_in_clear: Some("AUTH PLAIN".into()),
            ..Default::default()
        };
        assert_eq!(tls_findings(&implicit, "STARTTLS"), vec![]);
    }

    #[test]
    fn starttls_outcomes() {
        let base = TlsPicture {
            port: Some(25),
            offered: Some(true),
            ..Default::default()
        };
        assert_eq!(
            ids(&tls_findings(&base, "STARTTLS")),
            vec![("starttls-offered-not-used", Severity::Info)]
        );
        let sub = TlsPicture {
            port: Some(587),
            ..base.clone()
        };
        assert_eq!(
            ids(&tls_findings(&sub, "STARTTLS")),
            vec![("starttls-offered-not-used", Severity::Warn)]
        );
        let refused = TlsPicture {
            refused: Some("454".into()),
            ..base.clone()
        };
        assert_eq!(
            tls_findings(&refused, "STARTTLS"),
            vec![Finding::new(
                "starttls-failed",
                Severity::Warn,
                "STARTTLS refused with 454; the session stayed in clear"
            )]
        );
        let no_hello = TlsPicture {
            started: true,
            ..base.clone()
        };
        assert_eq!(
            ids(&tls_findings(&no_hello, "STLS")),
            vec![("starttls-failed", Severity::Warn)]
        );
        let stripped = TlsPicture {
            port: Some(143),
            offered: Some(false),
            offered_before: true,
            ..Default::default()
        };
        assert_eq!(
            tls_findings(&stripped, "STARTTLS")[0].reason,
            "no STARTTLS offered on port 143, although this server offered it earlier in this \
             run: possible STARTTLS stripping"
        );
        assert_eq!(
            tls_findings(&stripped, "STARTTLS")[0].severity,
            Severity::Alert
        );
        // Not offered on a port where nobody expects it, or capabilities unknown: silent.
        let other = TlsPicture {
            port: Some(2525),
            offered: Some(false),
            ..Default::default()
        };
        assert_eq!(tls_findings(&other, "STARTTLS"), vec![]);
        let unknown = TlsPicture {
            port: Some(25),
            ..Default::default()
        };
        assert_eq!(tls_findings(&unknown, "STARTTLS"), vec![]);
    }

    #[test]
    fn from_mismatch_by_organisational_domain() {
        assert_eq!(from_mismatch("example.com", "alice@Example.com"), None);
        assert_eq!(from_mismatch("example.com", ""), None);
        assert_eq!(
            from_mismatch("example.com", "bounce@bounces.example.com"),
            Some(Finding::new(
                "from-mismatch",
                Severity::Info,
                "header From domain example.com differs from envelope domain \
                 bounces.example.com (same organisational domain example.com)"
            ))
        );
        assert_eq!(
            from_mismatch("paypal.com", "x@evil.example").unwrap(),
            Finding::new(
                "from-mismatch",
                Severity::Alert,
                "header From domain paypal.com differs from envelope domain evil.example"
            )
        );
        // Two-level public suffixes: different companies under co.uk.
        assert_eq!(
            from_mismatch("shop.co.uk", "a@other.co.uk")
                .unwrap()
                .severity,
            Severity::Alert
        );
        assert_eq!(
            from_mismatch("mail.shop.co.uk", "a@shop.co.uk")
                .unwrap()
                .severity,
            Severity::Info
        );
    }

    #[test]
    fn helo_rules() {
        let c: IpAddr = "10.99.0.1".parse().unwrap();
        let bad = |h: &str| helo_suspicious(h, Some(c)).map(|f| f.reason);
        assert_eq!(
            bad("10.99.0.1").as_deref(),
            Some("HELO 10.99.0.1 is a bare IP address (an address literal needs brackets)")
        );
        assert_eq!(
            bad("localhost").as_deref(),
            Some("HELO localhost names no host")
        );
        assert_eq!(
            bad("[10.99.0.7]").as_deref(),
            Some("HELO [10.99.0.7] differs from the client address 10.99.0.1")
        );
        assert_eq!(
            bad("client").as_deref(),
            Some("HELO client is a name without a dot")
        );
        assert_eq!(
            bad("[nonsense]").as_deref(),
            Some("HELO [nonsense] is a malformed address literal")
        );
        // The close ones that must pass.
        assert_eq!(bad("[10.99.0.1]"), None);
        assert_eq!(bad("mail.example.org"), None);
        let v6: IpAddr = "fd99::1".parse().unwrap();
        assert_eq!(helo_suspicious("[IPv6:fd99::1]", Some(v6)), None);
        assert_eq!(helo_suspicious("[10.0.0.1]", None), None);
    }

    #[test]
    fn smuggling_and_pipelining() {
        assert_eq!(smtp_smuggling(&BodyFacts::default()), None);
        let nul_only = BodyFacts {
            nul_bytes: 3,
            ..Default::default()
        };
        assert_eq!(smtp_smuggling(&nul_only), None);
        let f = BodyFacts {
            bare_lf: 2,
            fake_end_markers: 1,
            ..Default::default()
        };
        assert_eq!(
            smtp_smuggling(&f),
            Some(Finding::new(
                "smtp-smuggling",
                Severity::Alert,
                "message data with 1 fake end-of-data markers (<LF>.<LF> and kin), 2 bare LF"
            ))
        );
        let long = BodyFacts {
            long_lines: 1,
            ..Default::default()
        };
        assert_eq!(smtp_smuggling(&long).unwrap().severity, Severity::Warn);
        assert_eq!(pipelining_violation(0), None);
        assert_eq!(
            pipelining_violation(2).unwrap().reason,
            "2 commands pipelined although the server did not offer PIPELINING"
        );
    }

    #[test]
    fn secure_mime_and_dkim() {
        let id = |m: &str, p: Option<&str>| secure_mime(m, p).map(|f| f.id);
        assert_eq!(id("application/pkcs7-mime", None), Some("smime"));
        assert_eq!(
            id("multipart/signed", Some("application/x-pkcs7-signature")),
            Some("smime")
        );
        assert_eq!(
            id("multipart/signed", Some("application/pgp-signature")),
            Some("pgp")
        );
        assert_eq!(
            id("multipart/encrypted", Some("application/pgp-encrypted")),
            Some("pgp")
        );
        assert_eq!(id("multipart/signed", None), None);
        assert_eq!(id("multipart/mixed", None), None);
        assert_eq!(
            dkim_domain(" v=1; a=rsa-sha256; d=Example.COM;\r\n s=sel; b=abc"),
            Some("example.com".into())
        );
        assert_eq!(dkim_domain("v=1; s=sel"), None);
        assert_eq!(
            dkim_signed(&["example.com".into(), "esp.net".into()])
                .unwrap()
                .reason,
            "DKIM-signed by d=example.com, d=esp.net"
        );
        assert_eq!(dkim_signed(&[]), None);
    }
}
